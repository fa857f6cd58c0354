// Run by `npm ci` here (postinstall). Portkey 1.15.2 on Node answers 500 "Something went wrong" to any
// call it passes through without mapping (Mistral's /v1/ocr among them): ResponseService.updateHeaders
// appends its x-portkey-* headers to the Response that fetch() returned, whose headers are immutable
// ("TypeError: immutable"). This copies such a Response before adding headers, and uses the copy.
// Each replaced text must occur exactly once, or this fails loudly (a new version needs a new look).
const fs = require("fs");
const path = require.resolve("@portkey-ai/gateway/build/start-server.js", { paths: [__dirname] });
const edits = [
  ["this.updateHeaders(i,n.cacheStatus,o),{response:i", "i=this.updateHeaders(i,n.cacheStatus,o),{response:i"],
  ["updateHeaders(e,t,a){return e.headers.append(",
   'updateHeaders(e,t,a){try{e.headers.set("x-bench-probe","1"),e.headers.delete("x-bench-probe")}' +
   "catch{e=new Response(e.body,e)}return e.headers.append("],
];
let text = fs.readFileSync(path, "utf8");
for (const [before, after] of edits) {
  if (text.includes(after)) continue; // already patched
  const count = text.split(before).length - 1;
  if (count !== 1) throw new Error(`patch.cjs: expected one "${before}" in ${path}, found ${count}`);
  text = text.replace(before, after);
}
fs.writeFileSync(path, text);
console.log("patched", path);
