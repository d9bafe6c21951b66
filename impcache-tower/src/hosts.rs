//! The namespace's list of hosts (keys by host): each store first lists its host
//! ([`list`]), so that `purge_url` and `purge_prefix` on any host read the list instead of
//! sweeping the keyspace. What this process listed is remembered ([`ListedHosts`]): when only
//! the list cannot be reached (on a Cluster, the one primary holding it is down or frozen), a
//! store of a host listed before writes its record all the same, and the listing is retried in
//! the background until it lands, so that a list that lost the host meanwhile (another
//! process's `purge_all`, an addition lost in a failover) names it again once it answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use impcache::__private::members;
use impcache::{Cache, Expire};

use crate::key;

/// The most hosts [`ListedHosts`] remembers: as many as a list holds; past them the list holds
/// too many and purges sweep.
const REMEMBERED: usize = members::MAX_MEMBERS;

/// The first pause of a background relisting, doubled after each failed attempt up to
/// [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two attempts of a background relisting.
const LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// The longest a background relisting goes on, for records stored without expiry (others: until
/// the last record that needs it has expired).
const LONGEST_RELISTING: Duration = Duration::from_secs(3600);

/// Lists the host of `keys` in its namespace's list of hosts before its record is written, the
/// record living `lifetime` (`None`: no expiry). A failure stores nothing (a record no list
/// names would survive a purge on any host), unless it is an outage (the list unreachable or
/// slow: whether the addition landed is unknown) and this process listed the host before: then
/// the record is written, and the listing retried in the background ([`ListedHosts`]). A refusal
/// of the write itself (`OOM`, `READONLY`, `NOREPLICAS`) stores nothing: it only fails when the
/// list lacks the host.
pub(crate) async fn list(
    cache: &Cache,
    keys: &key::UrlKeys,
    listed: &ListedHosts,
    lifetime: Option<Duration>,
) -> impcache::Result<()> {
    let (list, segment) = (keys.hosts_key(), keys.host_segment());
    match add(cache, &list, segment).await {
        Ok(()) => {
            listed.remember(&list, segment);
            Ok(())
        }
        Err(error) if error.is_outage() && listed.knows(&list, segment) => {
            let logged = impcache::__private::logged_error(cache, &error);
            tracing::debug!(error = %logged, "impcache-tower: the list of hosts is unreachable; storing, as this host was listed before, and listing it again in the background");
            listed.relist(cache, list, segment, lifetime);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Adds `segment` to the list of hosts `list`. The script refused (denied by an ACL, `NOPERM`,
/// or renamed away, `ERR`), the list is marked as holding too many hosts instead, so that purges
/// on any host sweep, and the response is stored all the same.
async fn add(cache: &Cache, list: &str, segment: &str) -> impcache::Result<()> {
    match members::add(cache, list, segment, Expire::NEVER).await {
        Err(error) if script_refused(&error) => {
            let error = impcache::__private::logged_error(cache, &error);
            tracing::warn!(%error, "impcache-tower: the list of hosts refused an addition; purges on any host will sweep");
            members::give_up(cache, list).await
        }
        added => added,
    }
}

/// Whether the server refused a script as such (not the write it would make).
fn script_refused(error: &impcache::Error) -> bool {
    matches!(
        error,
        impcache::Error::Server { code: Some(code), .. } if code == "NOPERM" || code == "ERR"
    )
}

/// A host in a list of hosts: the list's key and the host's segment.
type Listing = (String, String);

/// The hosts this process listed (each with the key of its namespace's list), shared by every
/// clone of the layer, and those whose listing failed during an outage of the list while their
/// records were written ([`list`]): their listing is retried in the background until it lands,
/// until this layer's `purge_all` of that namespace, or until the last such record has expired
/// (at most [`LONGEST_RELISTING`]). Forgotten for a namespace by its `purge_all`, which removes
/// the list; another process's it cannot see, so a record stored during an outage of the list
/// after one stays unlisted until the retry lands. At most [`REMEMBERED`] hosts (the hosts may
/// come from requests); beyond them a failed listing stores nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListedHosts(Arc<Mutex<Hosts>>);

#[derive(Debug, Default)]
struct Hosts {
    listed: HashSet<Listing>,
    /// The listings retried in the background: each by which task, until when.
    relisting: HashMap<Listing, Relisting>,
    /// The number of the next relisting task.
    next_task: u64,
}

/// A listing retried in the background.
#[derive(Debug)]
struct Relisting {
    task: u64,
    until: Instant,
}

impl ListedHosts {
    fn hosts(&self) -> MutexGuard<'_, Hosts> {
        // Nothing is left half-done under this lock: a poisoned one is as good.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `segment` is listed in `list`: its relisting, if any, is over.
    fn remember(&self, list: &str, segment: &str) {
        let listing = (list.to_owned(), segment.to_owned());
        let mut hosts = self.hosts();
        hosts.relisting.remove(&listing);
        if hosts.listed.len() < REMEMBERED {
            hosts.listed.insert(listing);
        }
    }

    /// Whether `segment` was listed in `list` by this process (since the last `purge_all` of
    /// its namespace here).
    fn knows(&self, list: &str, segment: &str) -> bool {
        let listing = (list.to_owned(), segment.to_owned());
        self.hosts().listed.contains(&listing)
    }

    /// Retries the listing of `segment` in `list` in the background, for a record living
    /// `lifetime`; one task at a time per host, which a later record's lifetime extends.
    /// Without a tokio runtime to run it on, there is none.
    fn relist(&self, cache: &Cache, list: String, segment: &str, lifetime: Option<Duration>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let until =
            Instant::now() + lifetime.map_or(LONGEST_RELISTING, |d| d.min(LONGEST_RELISTING));
        let listing = (list, segment.to_owned());
        let task = {
            let mut hosts = self.hosts();
            if let Some(relisting) = hosts.relisting.get_mut(&listing) {
                relisting.until = relisting.until.max(until);
                return;
            }
            let task = hosts.next_task;
            hosts.next_task += 1;
            hosts
                .relisting
                .insert(listing.clone(), Relisting { task, until });
            task
        };
        let slot = Slot {
            listed: self.clone(),
            listing,
            task,
        };
        let cache = cache.clone();
        runtime.spawn(async move { slot.relisting(&cache).await });
    }

    /// Forgets the hosts of `list`: it was removed (`purge_all`).    /// Forgets the hosts of `list`: it was removed (`purge_all`).
    pub(crate) fn forget(&self, list: &str) {
        let mut hosts = self.hosts();
        hosts.listed.retain(|(known, _)| known != list);
        hosts.relisting.retain(|(known, _), _| known != list);
    }
}

/// A relisting task's hold on its entry in [`Hosts::relisting`]: the entry goes when the task
/// ends, also when it is dropped unfinished (its runtime shut down), so that a later outage
/// starts another task instead of extending one that no longer runs.
struct Slot {
    listed: ListedHosts,
    listing: Listing,
    task: u64,
}

impl Slot {
    /// Retries the listing until it lands or is no longer needed.
    async fn relisting(&self, cache: &Cache) {
        let (list, segment) = &self.listing;
        let mut pause = FIRST_PAUSE;
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
            if !self.needed() {
                return;
            }
            match add(cache, list, segment).await {
                Ok(()) => return self.listed.remember(list, segment),
                Err(error) => {
                    let logged = impcache::__private::logged_error(cache, &error);
                    tracing::debug!(error = %logged, "impcache-tower: listing a host again failed; retrying");
                }
            }
        }
    }

    /// Whether the listing is still this task's to retry: not landed through another store,
    /// nor forgotten by a `purge_all`, nor past the records that needed it.
    fn needed(&self) -> bool {
        let hosts = self.listed.hosts();
        hosts.relisting.get(&self.listing).is_some_and(|relisting| {
            relisting.task == self.task && Instant::now() < relisting.until
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut hosts = self.listed.hosts();
        if hosts
            .relisting
            .get(&self.listing)
            .is_some_and(|relisting| relisting.task == self.task)
        {
            hosts.relisting.remove(&self.listing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_all_forgets_the_hosts_of_its_own_namespace_only() {
        let listed = ListedHosts::default();
        listed.remember("__impcache_hosts:a", "example.com");
        listed.remember("__impcache_hosts:b", "example.com");
        listed.forget("__impcache_hosts:a");
        assert!(!listed.knows("__impcache_hosts:a", "example.com"));
        assert!(listed.knows("__impcache_hosts:b", "example.com"));
    }

    /// A relisting task dropped unfinished (its runtime shut down) leaves no entry behind: a
    /// later outage starts a task of its own (it extended the dead one's, and the host was never
    /// listed again; found by a probe).
    #[test]
    fn a_relisting_dropped_with_its_runtime_leaves_no_entry() -> std::io::Result<()> {
        let listed = ListedHosts::default();
        let cache = Cache::new(impcache::MemoryCacheRepository::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        runtime.block_on(async { listed.relist(&cache, "list".to_owned(), "example.com", None) });
        assert_eq!(listed.hosts().relisting.len(), 1);
        drop(runtime);
        assert!(listed.hosts().relisting.is_empty());
        Ok(())
    }

    #[test]
    fn at_most_as_many_hosts_as_a_list_holds_are_remembered() {
        let listed = ListedHosts::default();
        for i in 0..=REMEMBERED {
            listed.remember("list", &format!("host{i}"));
        }
        assert!(listed.knows("list", "host0"));
        assert!(listed.knows("list", &format!("host{}", REMEMBERED - 1)));
        assert!(!listed.knows("list", &format!("host{REMEMBERED}")));
    }
}
