//! The shape of one region in the cloud, within Hetzner's fixed limits.
//!
//! Three limits decide it (`cz_adapters::cloud::catalogue`):
//!
//! - **A private network holds at most 100 servers.** A region of up to 100
//!   servers gets one (`network = auto`, the default, or `private`); above
//!   that (`auto`), or when asked (`public`), its nodes talk over their public
//!   interfaces. Cilium encrypts node-to-node traffic with WireGuard in
//!   every region (`bootstrap-kit/cilium/values.yaml.tera`), so the public
//!   path carries nothing in clear; a second firewall, `<prefix>-nodes`,
//!   opens the cluster's ports to the region's own addresses only.
//! - **A spread placement group holds at most 10 servers, a project at most
//!   50 groups.** The region takes `ceil(servers / 10)` groups and fills
//!   them in order, control planes first: the control planes share the
//!   first group, because a spread group's promise (one physical host per
//!   server) holds only inside the group. Two servers in different groups
//!   may share a host. So a region holds at most 500 servers, and every
//!   region of a project draws on the same 50.
//! - **A load balancer type takes so many targets** (lb11 25, lb21 75,
//!   lb31 150); a label-selector target counts every server it matches.
//!
//! [`check`] turns a region that cannot fit into field errors naming the
//! field and the limit, before anything is created; pre-flight then counts
//! the same objects against what the project already uses.

use cz_adapters::cloud::catalogue::{
    PLACEMENT_GROUPS_PER_PROJECT, SERVERS_PER_NETWORK, SERVERS_PER_PLACEMENT_GROUP,
    load_balancer_type_table,
};

use crate::request::{LoadBalancerTargets, NodeNetwork, Region};
use cz_adapters::DEFAULT_PARALLELISM;
use cz_adapters::cloud::BudgetConfig;

/// How one region is laid out in the cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLayout {
    pub control_planes: u32,
    pub workers: u32,
    /// Whether the servers share a private network; else they talk over
    /// their public interfaces.
    pub private_network: bool,
    /// Spread placement groups.
    pub placement_groups: u32,
    pub load_balancer_type: String,
    /// Servers the load balancer's label selector matches.
    pub load_balancer_targets: u32,
}

/// Requests one server create costs the project's budget: its `POST` and
/// the provider's polls of the create action (a create takes about 30 s,
/// polled at 0.5, 1, 2, 4, 8, 10, 10 s: seven polls).
pub const REQUESTS_PER_SERVER_CREATE: u32 = 8;

impl RegionLayout {
    /// How many objects the region's apply creates at once (tofu's
    /// `-parallelism`): every server and the load balancer in one wave where
    /// the project's request budget carries it, never fewer than tofu's
    /// default, and never more than half the budget can pay for in one burst
    /// (225 creates): the other half stays for the rest of the job, the
    /// release `GET`s and other jobs on the project. The bucket refills
    /// 1/s, far slower than a burst spends it, so a wider apply would wait
    /// for tokens instead of creating. Two large regions of one job apply at
    /// once and share the budget: the client and the provider wait on a
    /// `429`, and nothing fails.
    pub fn apply_parallelism(&self) -> u32 {
        let cap = BudgetConfig::default().capacity / 2 / REQUESTS_PER_SERVER_CREATE;
        (self.control_planes + self.workers + 1).clamp(DEFAULT_PARALLELISM, cap)
    }

    pub fn of(r: &Region) -> Self {
        let servers = r.control_plane.count + r.workers.count;
        let private_network = match r.network {
            NodeNetwork::Auto => servers <= SERVERS_PER_NETWORK,
            NodeNetwork::Private => true,
            NodeNetwork::Public => false,
        };
        let load_balancer_targets = match r.load_balancer.targets {
            LoadBalancerTargets::ControlPlane => r.control_plane.count,
            LoadBalancerTargets::AllNodes => servers,
        };
        Self {
            control_planes: r.control_plane.count,
            workers: r.workers.count,
            private_network,
            placement_groups: servers.div_ceil(SERVERS_PER_PLACEMENT_GROUP),
            load_balancer_type: r.load_balancer_type().to_owned(),
            load_balancer_targets,
        }
    }

    pub fn servers(&self) -> u32 {
        self.control_planes + self.workers
    }

    /// The placement group (0-based) of the server at `position` (0-based,
    /// the control planes first, then the workers).
    pub fn group_at(&self, position: u32) -> u32 {
        position / SERVERS_PER_PLACEMENT_GROUP
    }

    /// The placement group (0-based) of control plane `i` (0-based).
    pub fn group_of_control_plane(&self, i: u32) -> u32 {
        self.group_at(i)
    }

    /// The placement group (0-based) of worker `i` (0-based).
    pub fn group_of_worker(&self, i: u32) -> u32 {
        self.group_at(self.control_planes + i)
    }
}

/// The fixed limits a region breaks, as (field under `prefix`, message).
/// Counts that depend on the project (what it already uses, its quotas) are
/// pre-flight's.
pub fn check(prefix: &str, r: &Region) -> Vec<(String, String)> {
    let l = RegionLayout::of(r);
    let mut errs = Vec::new();
    let servers = format!(
        "{} control plane{} and {} worker{}",
        l.control_planes,
        if l.control_planes == 1 { "" } else { "s" },
        l.workers,
        if l.workers == 1 { "" } else { "s" },
    );
    if r.network == NodeNetwork::Private && l.servers() > SERVERS_PER_NETWORK {
        errs.push((
            format!("{prefix}.network"),
            format!(
                "a Hetzner private network holds at most {SERVERS_PER_NETWORK} servers; this \
                 region has {servers} ({}): use `auto` or `public` (WireGuard over the public \
                 interfaces), or at most {} workers",
                l.servers(),
                SERVERS_PER_NETWORK.saturating_sub(l.control_planes)
            ),
        ));
    }
    if l.placement_groups > PLACEMENT_GROUPS_PER_PROJECT {
        let most = PLACEMENT_GROUPS_PER_PROJECT * SERVERS_PER_PLACEMENT_GROUP;
        errs.push((
            format!("{prefix}.workers.count"),
            format!(
                "{servers} need {} spread placement groups of {SERVERS_PER_PLACEMENT_GROUP}; a \
                 Hetzner project holds at most {PLACEMENT_GROUPS_PER_PROJECT}: at most {} \
                 workers with {} control plane(s)",
                l.placement_groups,
                most.saturating_sub(l.control_planes),
                l.control_planes
            ),
        ));
    }
    if let Some(t) = load_balancer_type_table(&l.load_balancer_type)
        && l.load_balancer_targets > t.max_targets
    {
        errs.push((
            format!("{prefix}.load_balancer.type"),
            format!(
                "{} takes at most {} targets; targeting all nodes, this region has {} ({servers}): \
                 choose {}, or target the control planes",
                t.name,
                t.max_targets,
                l.load_balancer_targets,
                smallest_type_for(l.load_balancer_targets)
                    .map_or("fewer workers".to_owned(), |n| format!("type {n} or larger")),
            ),
        ));
    }
    errs
}

/// The smallest load balancer type that takes `targets`.
pub fn smallest_type_for(targets: u32) -> Option<&'static str> {
    cz_adapters::cloud::catalogue::LOAD_BALANCER_TYPE_NAMES
        .into_iter()
        .find(|n| load_balancer_type_table(n).is_some_and(|t| t.max_targets >= targets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{LoadBalancerKind, LoadBalancerSpec, NodeGroup, Provider};

    fn region(cp: u32, workers: u32) -> Region {
        Region {
            provider: Provider::Hetzner,
            location: "fsn1".into(),
            control_plane: NodeGroup { sku: "cpx32".into(), count: cp },
            workers: NodeGroup { sku: "cpx32".into(), count: workers },
            network: NodeNetwork::Auto,
            load_balancer: LoadBalancerSpec::default(),
        }
    }

    #[test]
    fn above_one_hundred_servers_the_nodes_go_public() {
        assert!(RegionLayout::of(&region(3, 97)).private_network);
        assert!(!RegionLayout::of(&region(3, 98)).private_network);
        let mut r = region(1, 2);
        r.network = NodeNetwork::Public;
        assert!(!RegionLayout::of(&r).private_network);
    }

    #[test]
    fn groups_fill_in_order_control_planes_first() {
        let l = RegionLayout::of(&region(3, 147));
        assert_eq!(l.placement_groups, 15);
        assert_eq!((0..3).map(|i| l.group_of_control_plane(i)).collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!([0, 6, 7, 146].map(|i| l.group_of_worker(i)), [0, 0, 1, 14]);
        // Every group holds at most 10.
        let mut per = vec![0; l.placement_groups as usize];
        (0..3).for_each(|i| per[l.group_of_control_plane(i) as usize] += 1);
        (0..147).for_each(|i| per[l.group_of_worker(i) as usize] += 1);
        assert!(per.iter().all(|n| *n == 10), "{per:?}");
        assert_eq!(RegionLayout::of(&region(1, 0)).placement_groups, 1);
    }

    #[test]
    fn limits_name_their_field() {
        assert!(check("regions[0]", &region(3, 497)).is_empty());
        let e = check("regions[0]", &region(3, 498));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "regions[0].workers.count");
        assert!(e[0].1.contains("at most 50") && e[0].1.contains("at most 497"), "{}", e[0].1);

        let mut r = region(3, 98);
        r.network = NodeNetwork::Private;
        let e = check("regions[1]", &r);
        assert_eq!(e[0].0, "regions[1].network");
        assert!(e[0].1.contains("at most 100 servers") && e[0].1.contains("(101)"), "{}", e[0].1);

        let mut r = region(3, 23);
        r.load_balancer.targets = LoadBalancerTargets::AllNodes;
        r.load_balancer.kind = Some(LoadBalancerKind::Lb11);
        let e = check("regions[0]", &r);
        assert_eq!(e[0].0, "regions[0].load_balancer.type");
        assert!(e[0].1.contains("lb11 takes at most 25") && e[0].1.contains("lb21"), "{}", e[0].1);
        r.load_balancer.kind = Some(LoadBalancerKind::Lb21);
        assert!(check("regions[0]", &r).is_empty());
        r.workers.count = 200;
        r.load_balancer.kind = Some(LoadBalancerKind::Lb31);
        assert!(check("regions[0]", &r)[0].1.contains("fewer workers"));
    }

    #[test]
    fn an_apply_creates_a_large_fleet_in_waves_the_budget_carries() {
        let layout = |workers| RegionLayout::of(&region(3, workers));
        assert_eq!(layout(1).apply_parallelism(), DEFAULT_PARALLELISM);
        assert_eq!(layout(47).apply_parallelism(), 51);
        assert_eq!(layout(497).apply_parallelism(), 225);
        let burst = layout(497).apply_parallelism() * REQUESTS_PER_SERVER_CREATE;
        assert!(burst <= BudgetConfig::default().capacity / 2);
    }
}
