// Runs at build time (npm run build): devDependencies are installed here.
const isNumber = require("is-number");
require("fs").writeFileSync("built.txt", `built at build time: ${isNumber(42)}\n`);
