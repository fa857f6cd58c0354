// Preloaded into Portkey's gateway by bench/run.py (node --require): its start-server.js listens on
// every interface and offers no host option, while every benchmark server must listen on loopback
// only. This binds any listen() without a host to 127.0.0.1; the gateway's code is not changed.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const [first] = args;
  if (typeof first === "number" && typeof args[1] !== "string") {
    return listen.call(this, first, "127.0.0.1", ...args.slice(1));
  }
  if (first && typeof first === "object" && first.port !== undefined && !first.host) {
    return listen.call(this, { ...first, host: "127.0.0.1" }, ...args.slice(1));
  }
  return listen.apply(this, args);
};
