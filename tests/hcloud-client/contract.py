"""Hetzner's official Python client (hcloud 2.27) against the hcloud fake.

Run by tests/tests/all/hcloud_client.rs: `python contract.py ENDPOINT TOKEN`.
Every kind a Sovereign creates is created (twice), read, listed with label
selectors (equality and set-based) and pagination, relabelled, waited on
through its actions, and deleted; the errors we classify are provoked (a
duplicate name, an unknown type, an unknown id, a firewall still in use,
and 429 with the rate-limit headers). Every
answer goes through the client's own models, so a field the API always sends
and the fake does not fails here. Prints one JSON line; exits non-zero on
the first broken expectation.
"""

import json
import sys

from hcloud import APIException, Client
from hcloud.firewalls import FirewallResource, FirewallRule
from hcloud.images import Image
from hcloud.load_balancer_types import LoadBalancerType
from hcloud.locations import Location
from hcloud.networks import NetworkSubnet
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer

endpoint, token = sys.argv[1], sys.argv[2]
c = Client(token=token, api_endpoint=endpoint, poll_interval=0.05)
SOV = "catalyst.openova.io/sovereign"
calls = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def step(name):
    calls.append(name)


def labels(idx):
    return {SOV: "contract", "idx": idx}


def api_error(code_set, f, what):
    try:
        f()
    except APIException as e:
        check(e.code in code_set, f"{what}: code {e.code!r}, wanted one of {code_set}")
        step(f"error {what} -> {e.code}")
        return
    raise AssertionError(f"{what}: no error")


def wait(action):
    if action is not None:
        action.wait_until_finished()
        check(action.status == "success", f"action {action.id} is {action.status}")
        step(f"wait action {action.command}")


def exercise(kind, client, made):
    """made: the two bound objects of `kind`, labelled idx=a and idx=b."""
    a, b = made
    got = client.get_by_id(a.id)
    check(got.name == a.name, f"{kind}: get_by_id")
    step(f"{kind} get")
    page = client.get_list(label_selector=f"{SOV}=contract", page=1, per_page=1)
    items = getattr(page, kind)
    check(len(items) == 1, f"{kind}: one per page")
    check(page.meta.pagination.total_entries == 2, f"{kind}: two in all")
    check(page.meta.pagination.next_page == 2, f"{kind}: a next page")
    page2 = getattr(client.get_list(label_selector=f"{SOV}=contract", page=2, per_page=1), kind)
    check({items[0].id, page2[0].id} == {a.id, b.id}, f"{kind}: the two pages hold both")
    step(f"{kind} list paginated")
    sel = client.get_all(label_selector=f"{SOV}=contract,idx in (a)")
    check([o.id for o in sel] == [a.id], f"{kind}: set-based selector")
    sel = client.get_all(label_selector=f"{SOV},idx notin (a)")
    check([o.id for o in sel] == [b.id], f"{kind}: exists + notin")
    step(f"{kind} list selectors")
    client.update(a, labels={**labels("a"), "relabelled": "yes"})
    check(client.get_by_id(a.id).labels.get("relabelled") == "yes", f"{kind}: relabel")
    step(f"{kind} update labels")


def delete(kind, client, obj):
    r = client.delete(obj)
    if r is not None and hasattr(r, "wait_until_finished"):
        wait(r)
    try:
        client.get_by_id(obj.id)
    except APIException as e:
        check(e.code == "not_found", f"{kind}: gone answers {e.code}")
        step(f"{kind} delete")
        return
    raise AssertionError(f"{kind}: still there after delete")


# The catalogue the preflight and the provider read.
check(c.locations.get_by_name("fsn1") is not None, "location fsn1")
check(c.server_types.get_by_name("cpx32") is not None, "server type cpx32")
check(c.load_balancer_types.get_by_name("lb11") is not None, "lb type lb11")
check(c.images.get_by_name_and_architecture("ubuntu-24.04", "x86") is not None, "image")
step("catalogue")

keys = [
    c.ssh_keys.create(
        name=f"key-{i}",
        public_key=f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1N9T0XHxqtJhJ0jgUu8Vgfjb9GJ1tXlF0Sm5v0Sj{i}0 k@{i}",
        labels=labels(i),
    )
    for i in "ab"
]
nets = [
    c.networks.create(
        name=f"net-{i}",
        ip_range="10.0.0.0/16",
        subnets=[NetworkSubnet(type="cloud", ip_range="10.0.1.0/24", network_zone="eu-central")],
        labels=labels(i),
    )
    for i in "ab"
]
pgs = []
for i in "ab":
    r = c.placement_groups.create(name=f"pg-{i}", type="spread", labels=labels(i))
    wait(r.action)
    pgs.append(r.placement_group)
servers = []
for i in "ab":
    r = c.servers.create(
        name=f"srv-{i}",
        server_type=ServerType(name="cpx32"),
        image=Image(name="ubuntu-24.04"),
        location=Location(name="fsn1"),
        ssh_keys=[keys[0]],
        networks=[nets[0]],
        placement_group=pgs[0],
        labels=labels(i),
    )
    wait(r.action)
    servers.append(r.server)
check(servers[0].private_net and servers[0].private_net[0].ip.startswith("10.0.1."), "private ip")
check(servers[0].public_net.ipv4.ip, "public ipv4")
acts = c.servers.get_actions(servers[0])
check(any(x.command == "create_server" for x in acts), "the server's actions list its create")
step("server actions")
# A host that stopped: Hetzner's client powers it on and resets it.
wait(c.servers.power_off(servers[1]))
check(c.servers.get_by_id(servers[1].id).status == "off", "powered off")
wait(c.servers.power_on(servers[1]))
check(c.servers.get_by_id(servers[1].id).status == "running", "powered on")
wait(c.servers.reset(servers[1]))
check(c.servers.get_by_id(servers[1].id).status == "running", "running after a reset")
api_error({"not_found"}, lambda: c.servers.power_on(BoundServer(c.servers, {"id": 999_999_999})), "power on a gone server")
step("server power actions")
fws = []
for i in "ab":
    r = c.firewalls.create(
        name=f"fw-{i}",
        rules=[FirewallRule(direction="in", protocol="tcp", source_ips=["0.0.0.0/0"], port="22")],
        resources=[FirewallResource(type="server", server=servers[0])],
        labels=labels(i),
    )
    for act in r.actions:
        wait(act)
    fws.append(r.firewall)
check(fws[0].rules[0].destination_ips == [], "a rule carries destination_ips")
lbs = []
for i in "ab":
    r = c.load_balancers.create(
        name=f"lb-{i}",
        load_balancer_type=LoadBalancerType(name="lb11"),
        location=Location(name="fsn1"),
        network=nets[0],
        labels=labels(i),
    )
    wait(r.action)
    lbs.append(r.load_balancer)
check(lbs[0].public_net.ipv4.ip, "the load balancer's public ipv4")

for kind, client, made in [
    ("ssh_keys", c.ssh_keys, keys),
    ("networks", c.networks, nets),
    ("placement_groups", c.placement_groups, pgs),
    ("servers", c.servers, servers),
    ("firewalls", c.firewalls, fws),
    ("load_balancers", c.load_balancers, lbs),
]:
    exercise(kind, client, made)

# The errors the adapter classifies.
api_error(
    {"uniqueness_error"},
    lambda: c.networks.create(name="net-a", ip_range="10.0.0.0/16"),
    "duplicate name",
)
api_error(
    {"invalid_server_type", "invalid_input", "not_found"},
    lambda: c.servers.create(
        name="srv-x", server_type=ServerType(name="nope99"), image=Image(name="ubuntu-24.04")
    ),
    "unknown server type",
)
api_error({"not_found"}, lambda: c.servers.get_by_id(999_999_999), "unknown id")
api_error(
    {"resource_in_use"},
    lambda: c.firewalls.delete(fws[0]),
    "a firewall still applied to a server",
)

# Hetzner's fixed limits: a spread group holds 10 servers; each load
# balancer type its own number of targets.
r = c.placement_groups.create(name="pg-full", type="spread", labels=labels("full"))
full = r.placement_group
members = []
for i in range(10):
    r = c.servers.create(
        name=f"srv-pg-{i}",
        server_type=ServerType(name="cx23"),
        image=Image(name="ubuntu-24.04"),
        location=Location(name="fsn1"),
        placement_group=full,
        labels=labels("full"),
    )
    wait(r.action)
    members.append(r.server)
check(len(c.placement_groups.get_by_id(full.id).servers) == 10, "the group lists its servers")
check(members[0].placement_group.id == full.id, "a server names its group")
api_error(
    {"placement_error"},
    lambda: c.servers.create(
        name="srv-pg-10",
        server_type=ServerType(name="cx23"),
        image=Image(name="ubuntu-24.04"),
        location=Location(name="fsn1"),
        placement_group=full,
    ),
    "an eleventh server in a spread group",
)
wanted = {"lb11": 25, "lb21": 75, "lb31": 150}
for t in c.load_balancer_types.get_all():
    check(t.max_targets == wanted[t.name], f"{t.name} takes {t.max_targets} targets")
step("load balancer types' targets")
servers.extend(members)
pgs.append(full)

for kind, client, made in [
    ("servers", c.servers, servers),
    ("load_balancers", c.load_balancers, lbs),
    ("firewalls", c.firewalls, fws),
    ("placement_groups", c.placement_groups, pgs),
    ("networks", c.networks, nets),
    ("ssh_keys", c.ssh_keys, keys),
]:
    for obj in made:
        delete(kind, client, obj)
check(c.servers.get_all(label_selector=SOV) == [], "nothing labelled is left")
print(json.dumps({"ok": True, "calls": calls}))
