#!/usr/bin/node
// npm_config_node_gyp for npm 6 (which runs it as a program) and npm 7+ (which runs it with the
// app's node): the node-gyp at $BAE_NODE_GYP, always run by the stack's own node (bin/compile).
"use strict";
var result = require("child_process").spawnSync("/usr/bin/node", [process.env.BAE_NODE_GYP].concat(process.argv.slice(2)),
  { stdio: "inherit" });
process.exit(result.status === null ? 1 : result.status);
