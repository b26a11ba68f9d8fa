//! Hetzner Cloud's public catalogue, one copy: the locations, and the
//! server and load balancer types with their list prices (gross EUR,
//! monthly; hourly is monthly / 720). The request validator uses the
//! location list for an early field-level error; pre-flight checks the
//! live API's catalogue and prices. The fakes of the Hetzner API serve
//! these tables.

use std::collections::BTreeMap;

use super::{LoadBalancerType, ServerType};

/// Locations that exist and accept servers.
pub const LOCATIONS: [&str; 6] = ["fsn1", "nbg1", "hel1", "ash", "hil", "sin"];

const EU: [&str; 3] = ["fsn1", "nbg1", "hel1"];

/// (name, cores, memory GB, EU monthly gross EUR, EU only).
const SERVER_TYPES: &[(&str, u32, f64, f64, bool)] = &[
    ("cx23", 2, 4.0, 3.49, true),
    ("cx33", 4, 8.0, 5.49, true),
    ("cx43", 8, 16.0, 9.49, true),
    ("cx53", 16, 32.0, 17.49, true),
    ("cpx11", 2, 2.0, 4.99, false),
    ("cpx21", 3, 4.0, 9.49, false),
    ("cpx31", 4, 8.0, 16.49, false),
    ("cpx41", 8, 16.0, 30.49, false),
    ("cpx51", 16, 32.0, 60.49, false),
    ("cpx22", 2, 4.0, 7.99, false),
    ("cpx32", 4, 8.0, 13.99, false),
    ("cpx42", 8, 16.0, 25.49, false),
    ("cpx52", 12, 24.0, 36.49, false),
    ("cpx62", 16, 32.0, 50.49, false),
    ("cax11", 2, 4.0, 4.49, true),
    ("cax21", 4, 8.0, 7.99, true),
    ("cax31", 8, 16.0, 15.99, true),
    ("cax41", 16, 32.0, 31.49, true),
    ("ccx13", 2, 8.0, 14.09, false),
    ("ccx23", 4, 16.0, 27.49, false),
    ("ccx33", 8, 32.0, 54.49, false),
    ("ccx43", 16, 64.0, 108.49, false),
    ("ccx53", 32, 128.0, 216.49, false),
    ("ccx63", 48, 192.0, 324.49, false),
];

/// The server types' names, in the table's order.
pub const SERVER_TYPE_NAMES: [&str; SERVER_TYPES.len()] = {
    let mut names = [""; SERVER_TYPES.len()];
    let mut i = 0;
    while i < SERVER_TYPES.len() {
        names[i] = SERVER_TYPES[i].0;
        i += 1;
    }
    names
};

/// (name, EU monthly gross EUR, most targets).
const LB_TYPES: &[(&str, f64, u32)] =
    &[("lb11", 5.39, 25), ("lb21", 16.40, 75), ("lb31", 32.90, 150)];

/// The load balancer types' names, smallest first.
pub const LOAD_BALANCER_TYPE_NAMES: [&str; 3] = ["lb11", "lb21", "lb31"];

// Hetzner's fixed limits (not per-project quotas, which the API reports):
// the plan of a region keeps within them, and the fakes enforce them.

/// Servers one private network holds.
pub const SERVERS_PER_NETWORK: u32 = 100;
/// Servers one spread placement group holds.
pub const SERVERS_PER_PLACEMENT_GROUP: u32 = 10;
/// Placement groups one project holds.
pub const PLACEMENT_GROUPS_PER_PROJECT: u32 = 50;

fn location_factor(loc: &str) -> f64 {
    match loc {
        "ash" | "hil" => 1.12,
        "sin" => 1.25,
        _ => 1.0,
    }
}

fn prices(eu_monthly: f64, locations: &[&str]) -> BTreeMap<String, (f64, f64)> {
    locations
        .iter()
        .map(|loc| {
            let monthly = (eu_monthly * location_factor(loc) * 100.0).round() / 100.0;
            let hourly = (monthly / 720.0 * 10_000.0).round() / 10_000.0;
            ((*loc).to_owned(), (hourly, monthly))
        })
        .collect()
}

/// A server type by name, with its price per location.
pub fn server_type_table(name: &str) -> Option<ServerType> {
    let &(n, cores, mem, eu, eu_only) = SERVER_TYPES.iter().find(|t| t.0 == name)?;
    let locs: &[&str] = if eu_only { &EU } else { &LOCATIONS };
    Some(ServerType {
        name: n.to_owned(),
        cores,
        memory_gb: mem,
        deprecated: false,
        prices: prices(eu, locs),
    })
}

/// A load balancer type by name, with its price per location.
pub fn load_balancer_type_table(name: &str) -> Option<LoadBalancerType> {
    let &(n, eu, max_targets) = LB_TYPES.iter().find(|t| t.0 == name)?;
    Some(LoadBalancerType { name: n.to_owned(), max_targets, prices: prices(eu, &LOCATIONS) })
}
