// Reports the Node.js and the package manager it was started with.
const express = require("express");

const app = express();
app.get("/", (req, res) => {
  const agent = (process.env.npm_config_user_agent || "").split(" ")[0];
  res.send(`node ${process.version} ${agent}\n`);
});
app.listen(process.env.PORT || 5000);
