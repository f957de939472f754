// Reports the Node.js and npm it runs with, and that the native addon loads.
const http = require("http");
const express = require("express");
const WebSocket = require("ws");
const bufferutil = require("bufferutil");
const fs = require("fs");
const path = require("path");

const app = express();
const built = fs.existsSync(path.join(path.dirname(require.resolve("bufferutil")), "build", "Release", "bufferutil.node"));
app.get("/", (req, res) => {
  const agent = (process.env.npm_config_user_agent || "").split(" ")[0];
  res.send(`node ${process.version} ${agent} bufferutil ${typeof bufferutil.mask === "function" ? "ok" : "missing"}` +
           ` ${built ? "built-from-source" : "prebuilt"}\n`);
});
const server = http.createServer(app);
new WebSocket.Server({ server }).on("connection", (ws) => ws.on("message", (m) => ws.send(`echo ${m}`)));
server.listen(process.env.PORT || 5000);
