// A Switchyard routing policy in Go, with the component model's canonical
// ABI written by hand (no bindings generator): `GOOS=wasip1 GOARCH=wasm
// go build -buildmode=c-shared` makes a WASI preview1 reactor core module
// that `tools/componentize --adapt-wasip1` turns into a component of the
// `router` world.
//
// The behaviour every example policy implements, from settings:
//   - `deny`: comma-separated IPv4 CIDRs; clients from them are refused;
//   - `user.<name>`: the pool for that user;
//   - `default`: the pool for everyone else;
//   - otherwise the login is refused with a message naming the user.
package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"structs"
	"unsafe"
)

// main is never called: a c-shared (reactor) module only runs its package
// initialisation, from `_initialize`, and then serves its exports.
func main() {}

// The garbage collector runs only where `route` starts it, never by itself.
// The host calls `cabi_realloc` while it lowers values into the instance,
// where the component model forbids calls out of it, and a collection (or
// the heap scavenging that comes with heap growth) started by an allocation
// there would read the clock through WASI and trap.
func init() {
	debug.SetGCPercent(-1)
}

// gcEvery is how many bytes may be allocated between two collections.
const gcEvery = 1 << 20

var allocated int

// tagged is `option<string>` / `result<string, string>` as the canonical ABI
// lays them out in memory: a discriminant byte, then (pointer, length).
type tagged struct {
	_   structs.HostLayout
	tag uint8
	ptr uint32
	len uint32
}

//go:wasmimport switchyard:policy/host@0.1.0 setting
func hostSetting(keyPtr unsafe.Pointer, keyLen uint32, ret unsafe.Pointer)

//go:wasmimport switchyard:policy/host@0.1.0 log
func hostLog(level uint32, msgPtr unsafe.Pointer, msgLen uint32)

const levelInfo = 1

// pinned keeps what the host wrote into memory from `cabi_realloc` (the
// strings passed to `route`, the values `setting` returns) reachable, so
// that Go's garbage collector leaves it alone until `route` has copied what
// it needs; `route` drops it all before it returns.
var pinned [][]byte

// cabi_realloc is the allocator the host uses to pass strings in (canonical
// ABI): Go's heap, pinned until the end of the current `route` call. With
// automatic collection off, allocating here never starts a collection.
//
//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr unsafe.Pointer, oldLen, align, newLen uint32) unsafe.Pointer {
	if align == 0 {
		align = 1
	}
	buf := make([]byte, newLen+align)
	pinned = append(pinned, buf)
	allocated += len(buf)
	p := unsafe.Pointer(unsafe.SliceData(buf))
	p = unsafe.Add(p, (align-uint32(uintptr(p))%align)%align)
	if oldPtr != nil {
		copy(unsafe.Slice((*byte)(p), newLen), unsafe.Slice((*byte)(oldPtr), min(oldLen, newLen)))
	}
	return p
}

// adapterArena is memory for the WASI preview1 adapter (its 64 KiB stack
// and its one page of state). It must not come from Go's heap: the adapter
// asks for it on its first WASI call, which Go's runtime makes while it is
// still initialising itself, and it must not come from `memory.grow`
// either, since Go's runtime takes all linear memory past its data for its
// own heap. A static array is neither: it lies within Go's data, and, being
// pointer-free, the garbage collector never looks into it.
var (
	adapterArena [3 << 16]byte
	adapterUsed  uintptr
)

// cabi_realloc_adapter is the allocator `wit-component` gives the adapter
// (instead of `cabi_realloc`) when the main module exports it. It runs
// before Go's runtime is initialised, so it only bumps an offset.
//
//go:wasmexport cabi_realloc_adapter
//go:nosplit
func cabiReallocAdapter(oldPtr unsafe.Pointer, oldLen, align, newLen uint32) unsafe.Pointer {
	base, a := uintptr(unsafe.Pointer(&adapterArena)), uintptr(max(align, 1))
	start := (base + adapterUsed + a - 1) &^ (a - 1)
	if oldPtr != nil || start+uintptr(newLen) > base+uintptr(len(adapterArena)) {
		return nil // the adapter traps on it
	}
	adapterUsed = start + uintptr(newLen) - base
	return unsafe.Add(unsafe.Pointer(&adapterArena), start-base)
}

// view is a string over memory the host wrote (no copy).
func view(ptr unsafe.Pointer, n uint32) string {
	return unsafe.String((*byte)(ptr), n)
}

var settingRet tagged

// hostBytes finds the n bytes the host wrote at address addr among the
// buffers `cabi_realloc` handed out.
func hostBytes(addr, n uint32) []byte {
	for i := len(pinned) - 1; i >= 0; i-- {
		buf := pinned[i]
		off := uintptr(addr) - uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
		if off <= uintptr(len(buf)) && uintptr(n) <= uintptr(len(buf))-off {
			return buf[off : off+uintptr(n)]
		}
	}
	return nil
}

// setting reads one entry of `[policy.settings]`. The value is copied out
// of the host-written memory, which `route` unpins before it returns.
func setting(key string) (string, bool) {
	hostSetting(unsafe.Pointer(unsafe.StringData(key)), uint32(len(key)), unsafe.Pointer(&settingRet))
	if settingRet.tag == 0 {
		return "", false
	}
	allocated += int(settingRet.len)
	return string(hostBytes(settingRet.ptr, settingRet.len)), true
}

func logInfo(msg string) {
	hostLog(levelInfo, unsafe.Pointer(unsafe.StringData(msg)), uint32(len(msg)))
}

// parseIPv4 reads a dotted quad: four decimal parts of 1 to 3 digits, each
// at most 255.
func parseIPv4(text string) (uint32, bool) {
	var value, part uint32
	digits, dots := 0, 0
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == '.':
			if digits == 0 || part > 255 {
				return 0, false
			}
			value = value<<8 | part
			part, digits = 0, 0
			dots++
		case c >= '0' && c <= '9':
			part = part*10 + uint32(c-'0')
			digits++
			if digits > 3 {
				return 0, false
			}
		default:
			return 0, false
		}
	}
	if dots != 3 || digits == 0 || part > 255 {
		return 0, false
	}
	return value<<8 | part, true
}

// clientIP is the IPv4 address of an `ip:port` client address.
func clientIP(addr string) (uint32, bool) {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		addr = addr[:i]
	}
	// An IPv4 client of a dual-stack listener ([::ffff:a.b.c.d]) is that
	// IPv4 client: matched against IPv4 networks, not let through.
	if len(addr) > 9 && strings.EqualFold(addr[:8], "[::ffff:") && addr[len(addr)-1] == ']' {
		addr = addr[8 : len(addr)-1]
	}
	return parseIPv4(addr)
}

func inCIDR(ip uint32, cidr string) bool {
	addr, prefix, hasPrefix := strings.Cut(cidr, "/")
	net, ok := parseIPv4(addr)
	if !ok {
		return false
	}
	bits := uint32(32)
	if hasPrefix {
		bits = 0
		for i := 0; i < len(prefix); i++ {
			c := prefix[i]
			if c < '0' || c > '9' {
				return false
			}
			bits = bits*10 + uint32(c-'0')
			if bits > 32 {
				return false
			}
		}
	}
	if bits == 0 {
		return true
	}
	shift := 32 - bits
	return ip>>shift == net>>shift
}

func denied(ip uint32, list string) bool {
	for cidr := range strings.SplitSeq(list, ",") {
		if inCIDR(ip, strings.Trim(cidr, " ")) {
			return true
		}
	}
	return false
}

// answer is route's result in memory; answerText keeps its text reachable
// until the host has read it (the next call replaces both).
var (
	answer     tagged
	answerText string
)

func reply(tag uint8, text string) unsafe.Pointer {
	answerText = text
	answer = tagged{tag: tag, ptr: uint32(uintptr(unsafe.Pointer(unsafe.StringData(text)))), len: uint32(len(text))}
	return unsafe.Pointer(&answer)
}

// route(user, db, client-addr) -> result<string, string>, flattened:
// strings are (pointer, length), `option` adds a discriminant, and the
// result comes back through a pointer to its memory layout.
//
//go:wasmexport route
func route(userPtr unsafe.Pointer, userLen, dbTag uint32, dbPtr unsafe.Pointer, dbLen uint32, clientPtr unsafe.Pointer, clientLen uint32) unsafe.Pointer {
	user := strings.Clone(view(userPtr, userLen))
	client := strings.Clone(view(clientPtr, clientLen))
	defer func() {
		clear(pinned)
		pinned = pinned[:0]
		if allocated > gcEvery {
			runtime.GC()
			allocated = 0
		}
	}()
	if list, ok := setting("deny"); ok {
		if ip, ok := clientIP(client); ok && denied(ip, list) {
			return reply(1, "Switchyard: clients from "+client+" are not allowed")
		}
	}
	if pool, ok := setting("user." + user); ok {
		return reply(0, pool)
	}
	if pool, ok := setting("default"); ok {
		return reply(0, pool)
	}
	logInfo("no pool for user '" + user + "'")
	return reply(1, "Switchyard: no pool is configured for user '"+user+"'")
}
