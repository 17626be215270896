// A Switchyard routing policy in JavaScript (componentize-js).
//
// The behaviour every example policy implements, from settings:
// - `deny`: comma-separated IPv4 CIDRs; clients from them are refused;
// - `user.<name>`: the pool for that user;
// - `default`: the pool for everyone else;
// - otherwise the login is refused with a message naming the user.

import { log, setting } from "switchyard:policy/host@0.1.0";

function ipv4(text) {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  let value = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return null;
    value = value * 256 + Number(p);
  }
  return value;
}

function clientIp(addr) {
  const i = addr.lastIndexOf(":");
  let host = i >= 0 ? addr.slice(0, i) : addr;
  // An IPv4 client of a dual-stack listener ([::ffff:a.b.c.d]) is that
  // IPv4 client: matched against IPv4 networks, not let through.
  const mapped = /^\[::ffff:([0-9.]+)\]$/i.exec(host);
  if (mapped) host = mapped[1];
  return ipv4(host);
}

function inCidr(ip, cidr) {
  const [net, lenText] = cidr.trim().split("/");
  const base = ipv4(net);
  const len = Number(lenText ?? 32);
  if (base === null || !(len >= 0 && len <= 32)) return false;
  const size = 2 ** (32 - len);
  return Math.floor(ip / size) === Math.floor(base / size);
}

export function route(user, db, clientAddr) {
  const deny = setting("deny");
  const ip = clientIp(clientAddr);
  if (deny && ip !== null && deny.split(",").some((c) => inCidr(ip, c))) {
    throw `Switchyard: clients from ${clientAddr} are not allowed`;
  }
  const pool = setting(`user.${user}`) ?? setting("default");
  if (pool === undefined || pool === null) {
    log("info", `no pool for user '${user}'`);
    throw `Switchyard: no pool is configured for user '${user}'`;
  }
  return pool;
}
