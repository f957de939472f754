// Runs at build time (npm run build): devDependencies are installed here.
const isOdd = require("is-odd");
require("fs").writeFileSync("built.txt", `built at build time: ${!isOdd(42)}\n`);
