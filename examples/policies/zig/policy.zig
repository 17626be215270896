//! A Switchyard routing policy in Zig, with the component model's canonical
//! ABI written by hand (no bindings generator): a freestanding wasm32 core
//! module that `tools/componentize` turns into a component of the `router`
//! world.
//!
//! The behaviour every example policy implements, from settings:
//! - `deny`: comma-separated IPv4 CIDRs; clients from them are refused;
//! - `user.<name>`: the pool for that user;
//! - `default`: the pool for everyone else;
//! - otherwise the login is refused with a message naming the user.

/// `option<string>` / `result<string, string>` as the canonical ABI lays
/// them out in memory: a discriminant byte, then (pointer, length).
const Tagged = extern struct {
    tag: u8,
    ptr: [*]const u8,
    len: usize,
};

extern "switchyard:policy/host@0.1.0" fn setting(key_ptr: [*]const u8, key_len: usize, ret: *Tagged) void;
extern "switchyard:policy/host@0.1.0" fn log(level: i32, msg_ptr: [*]const u8, msg_len: usize) void;

const level_info: i32 = 1;

// A bump allocator over memory grown on demand; nothing is freed. An
// instance serves at most `reuse_calls` calls (1000 by default) of a few
// hundred bytes each before Switchyard replaces it, so this stays small.
var heap_next: usize = 0;
var heap_end: usize = 0;

fn alloc(len: usize, alignment: usize) ?[*]u8 {
    const a = if (alignment == 0) 1 else alignment;
    var start = (heap_next + a - 1) & ~(a - 1);
    if (start + len > heap_end) {
        const pages = (len + a + 65535) / 65536;
        const old = @wasmMemoryGrow(0, pages);
        if (old < 0) return null;
        const base: usize = @as(usize, @intCast(old)) * 65536;
        if (heap_end != base) {
            heap_next = base;
        }
        heap_end = base + pages * 65536;
        start = (heap_next + a - 1) & ~(a - 1);
    }
    heap_next = start + len;
    return @ptrFromInt(start);
}

/// The allocator the host uses to pass strings in (canonical ABI).
export fn cabi_realloc(old_ptr: ?[*]u8, old_len: usize, alignment: usize, new_len: usize) ?[*]u8 {
    const p = alloc(new_len, alignment) orelse return null;
    if (old_ptr) |old| {
        const n = if (old_len < new_len) old_len else new_len;
        @memcpy(p[0..n], old[0..n]);
    }
    return p;
}

fn concat(a: []const u8, b: []const u8) []const u8 {
    const p = alloc(a.len + b.len, 1) orelse return a;
    @memcpy(p[0..a.len], a);
    @memcpy(p[a.len .. a.len + b.len], b);
    return p[0 .. a.len + b.len];
}

fn get(key: []const u8) ?[]const u8 {
    var ret: Tagged = undefined;
    setting(key.ptr, key.len, &ret);
    if (ret.tag == 0) return null;
    return ret.ptr[0..ret.len];
}

fn parseIpv4(text: []const u8) ?u32 {
    var value: u32 = 0;
    var part: u32 = 0;
    var digits: usize = 0;
    var dots: usize = 0;
    for (text) |c| {
        if (c == '.') {
            if (digits == 0 or part > 255) return null;
            value = (value << 8) | part;
            part = 0;
            digits = 0;
            dots += 1;
        } else if (c >= '0' and c <= '9') {
            part = part * 10 + (c - '0');
            digits += 1;
            if (digits > 3) return null;
        } else return null;
    }
    if (dots != 3 or digits == 0 or part > 255) return null;
    return (value << 8) | part;
}

fn clientIp(addr: []const u8) ?u32 {
    var host = addr;
    var i = addr.len;
    while (i > 0) : (i -= 1) {
        if (addr[i - 1] == ':') {
            host = addr[0 .. i - 1];
            break;
        }
    }
    // An IPv4 client of a dual-stack listener ([::ffff:a.b.c.d]) is that
    // IPv4 client: matched against IPv4 networks, not let through.
    const mapped = "[::ffff:";
    if (host.len > mapped.len + 1 and host[host.len - 1] == ']') {
        var same = true;
        for (mapped, 0..) |c, j| {
            if ((host[j] | 0x20) != (c | 0x20)) same = false;
        }
        if (same) host = host[mapped.len .. host.len - 1];
    }
    return parseIpv4(host);
}

fn trim(s: []const u8) []const u8 {
    var a: usize = 0;
    var b = s.len;
    while (a < b and s[a] == ' ') a += 1;
    while (b > a and s[b - 1] == ' ') b -= 1;
    return s[a..b];
}

fn inCidr(ip: u32, cidr: []const u8) bool {
    var slash: usize = cidr.len;
    for (cidr, 0..) |c, i| {
        if (c == '/') slash = i;
    }
    const net = parseIpv4(cidr[0..slash]) orelse return false;
    var len: u32 = 32;
    if (slash < cidr.len) {
        len = 0;
        for (cidr[slash + 1 ..]) |c| {
            if (c < '0' or c > '9') return false;
            len = len * 10 + (c - '0');
        }
        if (len > 32) return false;
    }
    if (len == 0) return true;
    const shift: u5 = @intCast(32 - len);
    return (ip >> shift) == (net >> shift) or len == 32 and ip == net;
}

fn denied(ip: u32, list: []const u8) bool {
    var start: usize = 0;
    var i: usize = 0;
    while (i <= list.len) : (i += 1) {
        if (i == list.len or list[i] == ',') {
            if (inCidr(ip, trim(list[start..i]))) return true;
            start = i + 1;
        }
    }
    return false;
}

var answer: Tagged = undefined;

fn ok(pool: []const u8) *Tagged {
    answer = .{ .tag = 0, .ptr = pool.ptr, .len = pool.len };
    return &answer;
}

fn refuse(text: []const u8) *Tagged {
    answer = .{ .tag = 1, .ptr = text.ptr, .len = text.len };
    return &answer;
}

/// `route(user, db, client-addr) -> result<string, string>`, flattened:
/// strings are (pointer, length), `option` adds a discriminant, and the
/// result comes back through a pointer to its memory layout.
export fn route(
    user_ptr: [*]const u8,
    user_len: usize,
    db_tag: i32,
    db_ptr: [*]const u8,
    db_len: usize,
    client_ptr: [*]const u8,
    client_len: usize,
) *Tagged {
    _ = db_tag;
    _ = db_ptr;
    _ = db_len;
    const user = user_ptr[0..user_len];
    const client = client_ptr[0..client_len];
    if (get("deny")) |list| {
        if (clientIp(client)) |ip| {
            if (denied(ip, list)) {
                return refuse(concat(concat("Switchyard: clients from ", client), " are not allowed"));
            }
        }
    }
    if (get(concat("user.", user))) |pool| return ok(pool);
    if (get("default")) |pool| return ok(pool);
    const msg = concat(concat("no pool for user '", user), "'");
    log(level_info, msg.ptr, msg.len);
    return refuse(concat(concat("Switchyard: no pool is configured for user '", user), "'"));
}
