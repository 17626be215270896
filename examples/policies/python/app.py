"""A Switchyard routing policy in Python (componentize-py).

The behaviour every example policy implements, from settings:
- `deny`: comma-separated IPv4 CIDRs; clients from them are refused;
- `user.<name>`: the pool for that user;
- `default`: the pool for everyone else;
- otherwise the login is refused with a message naming the user.
"""

import ipaddress

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


def client_ip(addr: str):
    host_part = addr.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host_part)
    except ValueError:
        return None
    # An IPv4 client of a dual-stack listener (::ffff:a.b.c.d) is that
    # IPv4 client: matched against IPv4 networks, not let through.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class WitWorld(wit_world.WitWorld):
    def route(self, user: str, db, client_addr: str) -> str:
        deny = host.setting("deny")
        ip = client_ip(client_addr)
        if deny and ip is not None:
            for cidr in deny.split(","):
                cidr = cidr.strip()
                try:
                    network = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    continue
                if ip.version == network.version and ip in network:
                    raise Err(f"Switchyard: clients from {client_addr} are not allowed")
        pool = host.setting(f"user.{user}") or host.setting("default")
        if pool is None:
            host.log(host.Level.INFO, f"no pool for user '{user}'")
            raise Err(f"Switchyard: no pool is configured for user '{user}'")
        return pool
