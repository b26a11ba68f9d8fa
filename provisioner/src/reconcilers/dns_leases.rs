//! Keeps DNS reservations: the `dns-reserve` zone of a job that has not
//! committed is held by a lease (`cz_phases::dns::lease`); this loop renews
//! the leases of live jobs and sweeps the reservations of jobs that are
//! gone.

use std::sync::Arc;
use std::time::Duration;

use cz_adapters::DnsApi;
use cz_phases::dns::lease::keep_leases;
use cz_state::Store;
use tokio_util::sync::CancellationToken;

use crate::wiring::SIM_POOL_ZONES;

/// Keeps DNS reservations: every third of the lease, renews the
/// lease of each live job's reservation (pending, running or paused: a
/// paused job is waiting for its operator, not gone), then removes the
/// reservations whose lease ran out more than a lease ago and whose job is
/// not live here. The first round runs at once, so a daemon that was down
/// longer than a lease renews its own before anything is swept.
pub async fn run(store: Store, dns: Arc<dyn DnsApi>, lease: Duration, stop: CancellationToken) {
    loop {
        // Live jobs only: the keeper never reads the rows of ended jobs.
        match store.live_jobs().await {
            Ok(jobs) => {
                match keep_leases(dns.as_ref(), &jobs, SIM_POOL_ZONES, lease, lease).await {
                    Ok((renewed, swept)) => {
                        if !renewed.is_empty() {
                            tracing::debug!(zones = ?renewed, "Renewed DNS leases.");
                        }
                        if !swept.is_empty() {
                            tracing::warn!(zones = ?swept, "Removed DNS reservations whose lease ran out.");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Cannot keep the DNS leases."),
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot list jobs for the DNS leases."),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
    }
}
