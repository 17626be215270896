// A Switchyard policy in JavaScript for the `statement-router` world: logins
// are routed from settings (`user.<name>`, then `default`), and each
// statement of a split pool's session goes
// - to the writer or a reader when it carries a routing hint comment,
//   `/* route=writer */` or `/* route=reader */`;
// - to the writer when it names a table of the `writer_tables` setting;
// - else where the host's built-in rule sends it.
// The same behaviour as the Rust `policies/hint`.

import { setting } from "switchyard:policy/host@0.1.0";

export function route(user, db, clientAddr) {
  const pool = setting(`user.${user}`) ?? setting("default");
  if (pool === undefined || pool === null) {
    throw `Switchyard: no pool is configured for user '${user}'`;
  }
  return pool;
}

// Read once per instance (the host keeps instances between statements).
let writerTables = null;

function names(text, table) {
  const word = /[a-z0-9_$]/;
  let at = text.indexOf(table);
  while (at >= 0) {
    const before = at > 0 ? text[at - 1] : "";
    const after = text[at + table.length] ?? "";
    if (!word.test(before) && !word.test(after)) return true;
    at = text.indexOf(table, at + 1);
  }
  return false;
}

export function routeStatement(statement) {
  const text = statement.text.toLowerCase();
  if (text.includes("/* route=writer */")) return { tag: "writer" };
  if (text.includes("/* route=reader */")) return { tag: "reader" };
  if (writerTables === null) {
    writerTables = (setting("writer_tables") ?? "")
      .split(",")
      .map((t) => t.trim().toLowerCase())
      .filter((t) => t.length > 0);
  }
  if (writerTables.some((t) => names(text, t))) return { tag: "writer" };
  return { tag: "builtin" };
}
