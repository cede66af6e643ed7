// Host for a virtual terminal on real MicroPython (WebAssembly port, Node.js).
//
//   node simulator/mpy/vterm.mjs TERMINAL_ID KEY_HEX
//
// Loads the project's MicroPython code (haochaping/__init__.py, protocol/,
// firmware/) into the interpreter's filesystem as on a board, runs
// simulator/mpy/vterm.py there, and calls its step() every LOOP_MS with the
// ticks, the serial bytes that arrived and the button mask.
// stdin lines:  "RX <hex>" serial bytes for the terminal, "M <mask>" buttons, "Q" quit.
// stdout lines: "READY micropython X.Y.Z", "TX <hex>" serial bytes from the
//               terminal, "THANKS seq level reason session writes", "SHOW pattern",
//               "ERROR <text>" (then exit 1).
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

const LOOP_MS = 5;
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const pkg = process.env.HCP_MPY_PACKAGE ||
  path.join(root, "tests", "mpy", "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");
const { loadMicroPython } = await import(pathToFileURL(pkg).href);

const [tid, keyHex] = process.argv.slice(2);
const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  stdout: (line) => process.stderr.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
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
    if (fs.statSync(s).isDirectory()) {
      if (name !== "__pycache__") copyTree(s, dest + "/" + name);
    } else if (name.endsWith(".py")) {
      FS.writeFile(dest + "/" + name, fs.readFileSync(s));
    }
  }
}
mkdirs("/lib/haochaping");
mkdirs("/flash");
FS.writeFile("/lib/haochaping/__init__.py", fs.readFileSync(path.join(root, "haochaping", "__init__.py")));
for (const part of ["protocol", "firmware"]) copyTree(path.join(root, part), "/lib/haochaping/" + part);

function fail(e) {
  process.stdout.write("ERROR " + String(e && e.message ? e.message : e).replace(/\n/g, " | ") + "\n");
  process.exit(1);
}
let step;
try {
  mp.runPython("import sys\nsys.path.insert(0, '/lib')\n");
  mp.runPython(fs.readFileSync(path.join(here, "vterm.py"), "utf8"));
  const start = mp.globals.get("start");
  step = mp.globals.get("step");
  process.stdout.write(start(parseInt(tid, 10), keyHex, "/flash/journal.bin") + "\n");
} catch (e) { fail(e); }

let rx = "";
let mask = 0;
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (l) => {
  if (l.startsWith("RX ")) rx += l.slice(3);
  else if (l.startsWith("M ")) mask = parseInt(l.slice(2), 10);
  else if (l === "Q") process.exit(0);
});
rl.on("close", () => process.exit(0));
setInterval(() => {
  try {
    const out = step(Date.now() & 0x3fffffff, rx, mask);
    rx = "";
    if (out) process.stdout.write(out + "\n");
  } catch (e) { fail(e); }
}, LOOP_MS);
