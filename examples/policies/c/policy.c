/*
 * A Switchyard routing policy in C, with the component model's canonical
 * ABI written by hand: a freestanding wasm32 core module (no libc, no WASI)
 * that tools/componentize turns into a component of the `router` world.
 *
 * The behaviour every example policy implements, from settings:
 * - `deny`: comma-separated IPv4 CIDRs; clients from them are refused;
 * - `user.<name>`: the pool for that user;
 * - `default`: the pool for everyone else;
 * - otherwise the login is refused with a message naming the user.
 */

#include <stddef.h>
#include <stdint.h>

/* option<string> and result<string, string> as the canonical ABI lays them
 * out in memory: a tag byte, then (pointer, length). */
typedef struct {
    uint8_t tag;
    const char *ptr;
    size_t len;
} tagged_t;

#define HOST_IMPORT(name) \
    __attribute__((import_module("switchyard:policy/host@0.1.0"), import_name(name)))

HOST_IMPORT("setting") void host_setting(const char *key, size_t key_len, tagged_t *ret);
HOST_IMPORT("log") void host_log(int32_t level, const char *msg, size_t msg_len);

#define LEVEL_INFO 1

/* A bump allocator over memory grown on demand; nothing is freed. An
 * instance serves at most `reuse_calls` calls before Switchyard replaces it,
 * so this stays small. */
static uintptr_t heap_next, heap_end;

static void *alloc(size_t len, size_t align) {
    if (align == 0) align = 1;
    uintptr_t start = (heap_next + align - 1) & ~(uintptr_t)(align - 1);
    if (start + len > heap_end) {
        size_t pages = (len + align + 65535) / 65536;
        size_t old = __builtin_wasm_memory_grow(0, pages);
        if (old == (size_t)-1) return 0;
        uintptr_t base = old * 65536;
        if (heap_end != base) heap_next = base;
        heap_end = base + pages * 65536;
        start = (heap_next + align - 1) & ~(uintptr_t)(align - 1);
    }
    heap_next = start + len;
    return (void *)start;
}

static void copy(char *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* The allocator the host uses to pass strings in (canonical ABI). */
__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_len, size_t align, size_t new_len) {
    char *p = alloc(new_len, align);
    if (p && old) copy(p, old, old_len < new_len ? old_len : new_len);
    return p;
}

typedef struct {
    const char *ptr;
    size_t len;
} str_t;

static size_t cstrlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static str_t lit(const char *s) { return (str_t){s, cstrlen(s)}; }

static str_t concat(str_t a, str_t b) {
    char *p = alloc(a.len + b.len, 1);
    if (!p) return a;
    copy(p, a.ptr, a.len);
    copy(p + a.len, b.ptr, b.len);
    return (str_t){p, a.len + b.len};
}

static int get(str_t key, str_t *out) {
    tagged_t ret;
    host_setting(key.ptr, key.len, &ret);
    if (!ret.tag) return 0;
    *out = (str_t){ret.ptr, ret.len};
    return 1;
}

static int parse_ipv4(str_t s, uint32_t *out) {
    uint32_t value = 0, part = 0;
    size_t digits = 0, dots = 0;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (c == '.') {
            if (!digits || part > 255) return 0;
            value = (value << 8) | part;
            part = 0, digits = 0, dots++;
        } else if (c >= '0' && c <= '9') {
            part = part * 10 + (uint32_t)(c - '0');
            if (++digits > 3) return 0;
        } else {
            return 0;
        }
    }
    if (dots != 3 || !digits || part > 255) return 0;
    *out = (value << 8) | part;
    return 1;
}

static int client_ip(str_t addr, uint32_t *out) {
    str_t host = addr;
    for (size_t i = addr.len; i > 0; i--)
        if (addr.ptr[i - 1] == ':') {
            host = (str_t){addr.ptr, i - 1};
            break;
        }
    /* An IPv4 client of a dual-stack listener ([::ffff:a.b.c.d]) is that
       IPv4 client: matched against IPv4 networks, not let through. */
    static const char mapped[] = "[::ffff:";
    size_t n = sizeof mapped - 1, j = 0;
    if (host.len > n + 1 && host.ptr[host.len - 1] == ']') {
        while (j < n && (host.ptr[j] | 0x20) == (mapped[j] | 0x20)) j++;
        if (j == n) host = (str_t){host.ptr + n, host.len - n - 1};
    }
    return parse_ipv4(host, out);
}

static str_t trim(str_t s) {
    while (s.len && s.ptr[0] == ' ') s.ptr++, s.len--;
    while (s.len && s.ptr[s.len - 1] == ' ') s.len--;
    return s;
}

static int in_cidr(uint32_t ip, str_t cidr) {
    size_t slash = cidr.len;
    for (size_t i = 0; i < cidr.len; i++)
        if (cidr.ptr[i] == '/') slash = i;
    uint32_t net;
    if (!parse_ipv4((str_t){cidr.ptr, slash}, &net)) return 0;
    uint32_t len = 32;
    if (slash < cidr.len) {
        len = 0;
        for (size_t i = slash + 1; i < cidr.len; i++) {
            char c = cidr.ptr[i];
            if (c < '0' || c > '9') return 0;
            len = len * 10 + (uint32_t)(c - '0');
        }
        if (len > 32) return 0;
    }
    if (len == 0) return 1;
    return (ip >> (32 - len)) == (net >> (32 - len));
}

static int denied(uint32_t ip, str_t list) {
    size_t start = 0;
    for (size_t i = 0; i <= list.len; i++) {
        if (i == list.len || list.ptr[i] == ',') {
            if (in_cidr(ip, trim((str_t){list.ptr + start, i - start}))) return 1;
            start = i + 1;
        }
    }
    return 0;
}

static tagged_t answer;

static tagged_t *ok(str_t pool) {
    answer = (tagged_t){0, pool.ptr, pool.len};
    return &answer;
}

static tagged_t *refuse(str_t text) {
    answer = (tagged_t){1, text.ptr, text.len};
    return &answer;
}

/* route(user, db, client-addr) -> result<string, string>, flattened:
 * strings are (pointer, length), `option` adds a tag, and the result comes
 * back through a pointer to its memory layout. */
__attribute__((export_name("route")))
tagged_t *route(const char *user_ptr, size_t user_len, int32_t db_tag, const char *db_ptr,
                size_t db_len, const char *client_ptr, size_t client_len) {
    (void)db_tag, (void)db_ptr, (void)db_len;
    str_t user = {user_ptr, user_len}, client = {client_ptr, client_len}, list, pool;
    uint32_t ip;
    if (get(lit("deny"), &list) && client_ip(client, &ip) && denied(ip, list))
        return refuse(concat(concat(lit("Switchyard: clients from "), client), lit(" are not allowed")));
    if (get(concat(lit("user."), user), &pool)) return ok(pool);
    if (get(lit("default"), &pool)) return ok(pool);
    str_t msg = concat(concat(lit("no pool for user '"), user), lit("'"));
    host_log(LEVEL_INFO, msg.ptr, msg.len);
    return refuse(concat(concat(lit("Switchyard: no pool is configured for user '"), user), lit("'")));
}
