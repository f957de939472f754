const express = require("express");
const fs = require("fs");
const app = express();
app.get("/", (req, res) => res.send(`hello from express on ${process.env.DYNO || "?"}\n`));
app.get("/built", (req, res) => res.send(fs.readFileSync("built.txt", "utf8")));
app.get("/devdeps", (req, res) => {
  try { require.resolve("is-odd"); res.send("present\n"); } catch (e) { res.send("pruned\n"); }
});
const port = process.env.PORT || 5000;
app.listen(port, () => console.log(`listening on ${port}`));
