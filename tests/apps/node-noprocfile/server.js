// No Procfile and no start script: npm start runs `node server.js`.
const http = require("http");
http.createServer((req, res) => res.end("hello from plain node\n")).listen(process.env.PORT || 5000);
