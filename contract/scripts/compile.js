#!/usr/bin/env node
// Compiles the Compute Contract and the test MOR token with solc-js (the exact
// version pinned in package.json) and OpenZeppelin from node_modules.
//   --write  writes build/<Contract>.json (ABI, bytecode, deployed bytecode)
//   --check  compiles afresh and exits 1 if build/ differs (the committed artifacts
//            must be what these sources compile to)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const sources = {
  "src/ComputeContract.sol": "ComputeContract",
  "test/TestMOR.sol": "TestMOR",
};
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function findImports(importPath) {
  const candidates = [path.join(root, importPath), path.join(root, "node_modules", importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath} (run npm ci in contract/)` };
}

function compile() {
  const input = { language: "Solidity", sources: {}, settings };
  for (const file of Object.keys(sources)) {
    input.sources[file] = { content: fs.readFileSync(path.join(root, file), "utf8") };
  }
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length > 0) process.exit(2);
  const artifacts = {};
  for (const [file, name] of Object.entries(sources)) {
    const c = output.contracts[file][name];
    artifacts[name] = JSON.stringify(
      {
        contractName: name,
        source: file,
        compiler: "solc-js " + solc.version(),
        settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion },
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      },
      null,
      2
    ) + "\n";
  }
  return artifacts;
}

const mode = process.argv[2];
if (mode !== "--write" && mode !== "--check") {
  process.stderr.write("usage: compile.js --write|--check\n");
  process.exit(64);
}
const artifacts = compile();
let stale = 0;
for (const [name, text] of Object.entries(artifacts)) {
  const file = path.join(root, "build", name + ".json");
  if (mode === "--write") {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
    process.stdout.write(`wrote build/${name}.json\n`);
  } else {
    const committed = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
    if (committed !== text) {
      process.stderr.write(`build/${name}.json differs from a fresh compile: run npm run build in contract/\n`);
      stale += 1;
    } else {
      process.stdout.write(`build/${name}.json is fresh\n`);
    }
  }
}
process.exit(stale === 0 ? 0 : 1);
