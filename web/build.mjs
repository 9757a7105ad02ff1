// Builds web/: protobuf code generated from wire/proto (pbjs + pbts), a type check (tsc), the
// SDK bundles (build/sdk/haberci.mjs for Node tests, dist/haberci.min.js minified) and the
// demo page (dist/). Prints the SDK's minified + gzipped size. Usage: node build.mjs
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const bin = (name) => join(here, "node_modules", ".bin", name);
function run(cmd, args) {
  try {
    execFileSync(cmd, args, { cwd: here, stdio: "inherit" });
  } catch {
    console.error(`web build: ${cmd.split("/").pop()} failed`);
    process.exit(1);
  }
}

mkdirSync(join(here, "build/gen"), { recursive: true });
mkdirSync(join(here, "dist"), { recursive: true });

// Static code for encode/decode only: no reflection, JSON conversion or verify functions.
run(bin("pbjs"), [
  "-t", "static-module", "-w", "es6", "--force-number", "--no-create", "--no-verify",
  "--no-convert", "--no-delimited", "--no-typeurl", "--no-service", "--no-beautify",
  "-p", "../wire/proto", "-o", "build/gen/proto.js",
  "haberci/v1/common.proto", "haberci/v1/client.proto", "haberci/v1/server.proto",
]);
run(bin("pbts"), ["--no-comments", "-o", "build/gen/proto.d.ts", "build/gen/proto.js"]);
run(bin("tsc"), ["-p", "tsconfig.json"]);

const common = {
  bundle: true,
  format: "esm",
  target: "es2022",
  alias: { "@protobufjs/inquire": "./sdk/src/absent.cjs", long: "./sdk/src/absent.cjs" },
  logLevel: "warning",
  absWorkingDir: here,
};
await esbuild.build({ ...common, entryPoints: ["sdk/src/index.ts"], outfile: "build/sdk/haberci.mjs" });
await esbuild.build({ ...common, entryPoints: ["sdk/src/index.ts"], outfile: "dist/haberci.min.js", minify: true });

// The demo page: one script (SDK included), its page and stylesheet.
await esbuild.build({ ...common, entryPoints: ["demo/app.ts"], outfile: "dist/app.js", minify: true });
for (const file of ["index.html", "style.css"]) copyFileSync(join(here, "demo", file), join(here, "dist", file));

const min = readFileSync(join(here, "dist/haberci.min.js"));
const size = { minified: min.length, gzipped: gzipSync(min, { level: 9 }).length };
writeFileSync(join(here, "build/size.json"), JSON.stringify(size) + "\n");
console.log(`web: SDK ${size.minified} bytes minified, ${size.gzipped} bytes minified + gzipped`);
