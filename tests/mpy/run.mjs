// Run a Python script on real MicroPython (the official WebAssembly port).
//
//   node tests/mpy/run.mjs [--heap BYTES] [--file SRC:DEST ...] SCRIPT.py [ARG ...]
//
// The project's MicroPython code (haochaping/__init__.py, protocol/, firmware/)
// is copied into the interpreter's filesystem under /lib/haochaping, laid out
// as on a board, so `import haochaping.protocol.frame` works as it does there.
// --file copies one more host file in (e.g. vectors.json); ARGs reach the
// script as sys.argv[1:].  After the script, files under /out are copied back
// to the host directory named by HCP_MPY_OUT, if set, so a test can inspect
// what the firmware wrote to "flash".  Exit status: 0 if the script finished,
// 1 if it raised (the traceback is printed on stderr).
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");

let heap = 256 * 1024;
const files = [];
const args = process.argv.slice(2);
while (args.length && args[0].startsWith("--")) {
  const opt = args.shift();
  if (opt === "--heap") heap = parseInt(args.shift(), 10);
  else if (opt === "--file") files.push(args.shift());
  else { console.error(`run.mjs: unknown option ${opt}`); process.exit(2); }
}
if (!args.length) { console.error("usage: run.mjs [--heap N] [--file SRC:DEST] SCRIPT.py [ARG...]"); process.exit(2); }
const script = args.shift();

let stderr = "";
const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => { stderr += line + "\n"; process.stderr.write(line + "\n"); },
});
const FS = mp.FS;

function mkdirs(p) {
  let cur = "";
  for (const part of p.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}
function copyTree(src, dest) {
  mkdirs(dest);
  for (const name of fs.readdirSync(src)) {
    const s = path.join(src, name);
    const st = fs.statSync(s);
    if (st.isDirectory()) {
      if (name === "__pycache__" || name === "node_modules") continue;
      copyTree(s, dest + "/" + name);
    } else if (name.endsWith(".py") || name.endsWith(".json")) {
      FS.writeFile(dest + "/" + name, fs.readFileSync(s));
    }
  }
}

mkdirs("/lib/haochaping");
FS.writeFile("/lib/haochaping/__init__.py", fs.readFileSync(path.join(root, "haochaping", "__init__.py")));
for (const part of ["protocol", "firmware"]) {
  if (fs.existsSync(path.join(root, part))) copyTree(path.join(root, part), "/lib/haochaping/" + part);
}
for (const spec of files) {
  const i = spec.lastIndexOf(":");
  const src = spec.slice(0, i), dest = spec.slice(i + 1);
  mkdirs(path.posix.dirname(dest));
  FS.writeFile(dest, fs.readFileSync(src));
}
mkdirs("/out");
const inDir = process.env.HCP_MPY_IN;
if (inDir && fs.existsSync(inDir)) {
  for (const name of fs.readdirSync(inDir)) FS.writeFile("/out/" + name, fs.readFileSync(path.join(inDir, name)));
}

const code = fs.readFileSync(script, "utf8");
let status = 0;
try {
  mp.runPython(
    "import sys\n" +
    "sys.path.insert(0, '/lib')\n" +
    "try:\n    sys.argv[:] = " + JSON.stringify([script, ...args]) + "\n" +
    "except AttributeError:\n    pass\n"
  );
  await mp.runPythonAsync(code);
} catch (e) {
  status = 1;
  process.stderr.write(String(e && e.message ? e.message : e) + "\n");
}

const outDir = process.env.HCP_MPY_OUT;
if (outDir) {
  fs.mkdirSync(outDir, { recursive: true });
  for (const name of FS.readdir("/out")) {
    if (name === "." || name === "..") continue;
    const st = FS.stat("/out/" + name);
    if (FS.isFile(st.mode)) fs.writeFileSync(path.join(outDir, name), FS.readFile("/out/" + name));
  }
}
process.exit(status);
