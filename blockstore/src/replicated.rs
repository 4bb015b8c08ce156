//! [`ReplicatedStore`]: the store a receiver writes to in hot-replication mode. A put
//! resolves only when the block is in the local [`BlockManager`] *and* on
//! `peer_replicas` peers; reads come from the local copy or any surviving replica.
//!
//! Placement: peers are tried in round-robin order starting one further for every put,
//! so load spreads evenly; a peer that is down is skipped at once (its client fails fast),
//! and a peer that fails or times out is replaced by the next one, until enough replicas
//! acknowledged or every peer was tried. The put then fails with
//! [`Error::InsufficientReplicas`] naming every peer and what went wrong with it.
//!
//! Replica bookkeeping: for every block this store put, it remembers which peer *process*
//! (address and instance number) acknowledged it. A replica is
//! - *live* while that peer is connected with the same instance number;
//! - *suspect* while the peer is disconnected for less than `peer_dead_after_ms` (it may
//!   come back with its memory intact: a network blip);
//! - *lost* when the peer came back as a new process, or stayed away longer.
//!
//! [`ReplicatedStore::repair`] (run every `repair_interval_ms` in the background unless
//! that is 0) copies blocks with fewer than `peer_replicas` live-or-suspect replicas to
//! other connected peers, from the local copy (or from a surviving replica).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::block::{Block, BlockId};
use crate::config::Config;
use crate::error::{Error, PeerFailure, PeerFailures, PeerOutcome, Result};
use crate::manager::BlockManager;
use crate::peer::{PeerClient, PeerStatus};
use crate::protocol::Tier;

/// What a successful put stored, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    /// The block.
    pub block: BlockId,
    /// Where the local copy is.
    pub local: Tier,
    /// The peers that acknowledged a replica (exactly `peer_replicas` of them).
    pub replicas: Vec<ReplicaInfo>,
    /// Peers tried first that failed, as `"<peer>: <why>"` (the put failed over to
    /// others). Empty in the common case; worth a metric.
    pub failed_over: Vec<String>,
}

/// One peer replica in a [`PutReceipt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The peer's address.
    pub peer: String,
    /// Where the peer put it.
    pub tier: Tier,
}

/// What [`ReplicatedStore::remove`] did.
#[derive(Debug, Default)]
pub struct RemoveReport {
    /// Blocks removed from the local store.
    pub local_removed: u64,
    /// Per peer reached: how many of the ids it held.
    pub peer_removed: Vec<(String, u64)>,
    /// Peers not reached and local removals that failed. Removals for peers not reached
    /// are kept (up to `pending_removals_max` ids per peer) and retried by the repair
    /// pass when the peer is back.
    pub failures: PeerFailures,
}

/// What [`ReplicatedStore::list_remote`] found.
#[derive(Debug, Default)]
pub struct RemoteListing {
    /// Every block id found on a peer, with the peers holding it.
    pub blocks: BTreeMap<BlockId, Vec<String>>,
    /// Peers that could not be listed.
    pub failures: PeerFailures,
}

/// What one [`ReplicatedStore::repair`] pass did (it also delivers removals that could
/// not reach a peer earlier).
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Blocks whose replicas were examined.
    pub blocks_checked: u64,
    /// New replicas made.
    pub replicas_made: u64,
    /// Replicas dropped from the bookkeeping because they are lost.
    pub replicas_dropped: u64,
    /// Blocks still below `peer_replicas` live-or-suspect replicas after the pass.
    pub under_replicated: Vec<BlockId>,
    /// Removals delivered to peers that had been unreachable when they were asked for.
    pub removals_delivered: u64,
    /// What went wrong on the way.
    pub failures: PeerFailures,
}

/// Local store plus replication to peers. Not `Clone`: share it behind an `Arc`. Dropping
/// it stops the peer connections and the background repair.
#[derive(Debug)]
pub struct ReplicatedStore {
    inner: Arc<Inner>,
    repair_task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    local: BlockManager,
    peers: Vec<PeerClient>,
    /// Replicas of every block this store holds or put, by peer index and peer instance.
    locations: Mutex<HashMap<BlockId, Vec<Replica>>>,
    /// Per peer index: removals not delivered yet (the peer was down).
    pending_removals: Mutex<Vec<std::collections::VecDeque<BlockId>>>,
    next_peer: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replica {
    peer: usize,
    instance: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaState {
    Live,
    Suspect,
    Lost,
}

impl ReplicatedStore {
    /// Opens the local store from `config`, starts a client for each peer address
    /// (`host:port`), and waits until every peer is connected or failed its first attempt
    /// (at most `connect_timeout_ms + handshake_timeout_ms`). Peers that are not up yet keep
    /// being retried in the background; puts need `peer_replicas` of them connected.
    pub async fn open(config: Config, peers: &[String]) -> Result<Self> {
        config.validate()?;
        if config.peer_replicas > peers.len() {
            return Err(Error::InvalidConfig {
                setting: "peer_replicas",
                reason: format!(
                    "{} peer replicas need at least as many peers; {} given",
                    config.peer_replicas,
                    peers.len()
                ),
            });
        }
        for (i, addr) in peers.iter().enumerate() {
            if peers[..i].contains(addr) {
                return Err(Error::InvalidConfig {
                    setting: "peers",
                    reason: format!("{addr} is listed twice; replicas must be on distinct peers"),
                });
            }
        }
        let local = BlockManager::open(&config)?;
        let clients = peers
            .iter()
            .map(|addr| PeerClient::start(addr.clone(), config.clone()))
            .collect::<Result<Vec<_>>>()?;
        let wait = Duration::from_millis(config.connect_timeout_ms + config.handshake_timeout_ms);
        let mut waits = JoinSet::new();
        for client in &clients {
            let client = client.clone();
            waits.spawn(async move { client.wait_first_attempt(wait).await });
        }
        while waits.join_next().await.is_some() {}
        for client in &clients {
            if !client.is_connected() {
                tracing::warn!(
                    peer = client.addr(),
                    state = ?client.status().down_reason,
                    "peer not reachable at startup; retrying in the background"
                );
            }
        }
        let repair_ms = config.repair_interval_ms;
        let inner = Arc::new(Inner {
            config,
            local,
            peers: clients,
            locations: Mutex::new(HashMap::new()),
            pending_removals: Mutex::new(vec![std::collections::VecDeque::new(); peers.len()]),
            next_peer: AtomicUsize::new(0),
        });
        let repair_task = (repair_ms > 0 && !inner.peers.is_empty())
            .then(|| tokio::spawn(repair_loop(Arc::downgrade(&inner), repair_ms)));
        Ok(ReplicatedStore { inner, repair_task })
    }

    /// Stores a block locally and on `peer_replicas` peers; resolves only when all of them
    /// hold it. See the crate docs ("When a put counts as stored") for the exact guarantee
    /// and for what to do on each error. On failure the block is not stored anywhere this
    /// call put it (best effort on peers).
    pub async fn put(&self, block: Block) -> Result<PutReceipt> {
        let inner = &self.inner;
        let id = block.id();
        block.verify_at("the block handed to put")?;
        let (local_tier, newly_local) = inner.local.put_verified_new(block.clone()).await?;
        let need = inner.config.peer_replicas;
        if need == 0 {
            return Ok(PutReceipt {
                block: id,
                local: local_tier,
                replicas: Vec::new(),
                failed_over: Vec::new(),
            });
        }
        let n = inner.peers.len();
        let start = inner.next_peer.fetch_add(1, Ordering::Relaxed) % n;
        // Connected peers first, in round-robin order; peers that are down come last, so
        // they are only tried (and fail fast) when the others are not enough.
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| !inner.peers[i].is_connected());
        let (replicas, stored, failures) = inner.place(&block, &order, need).await;
        if replicas.len() < need {
            inner.undo_failed_put(id, newly_local, &replicas).await;
            let stored_on = replicas
                .iter()
                .map(|r| inner.peers[r.peer].addr().to_owned())
                .collect();
            return Err(Error::InsufficientReplicas {
                block: id,
                needed: need,
                stored_on,
                failures,
            });
        }
        if !failures.0.is_empty() {
            tracing::info!(block = %id, skipped = %failures, "replicated after failing over");
        }
        inner.record(id, &replicas);
        let failed_over = failures.0.iter().map(ToString::to_string).collect();
        Ok(PutReceipt {
            failed_over,
            block: id,
            local: local_tier,
            replicas: stored,
        })
    }

    /// Returns a block from the local store, or else from a peer: first the peers known to
    /// hold it, then every other peer (which is how a restarted driver, whose local store
    /// is empty, finds its blocks by id). A local copy that fails its checksum is replaced
    /// by a good one from a peer. [`Error::BlockUnavailable`] lists what each place said.
    pub async fn get(&self, id: &BlockId) -> Result<Block> {
        let inner = &self.inner;
        let mut attempts = Vec::new();
        let mut local_corrupt = false;
        match inner.local.get(id).await {
            Ok(Some(block)) => return Ok(block),
            Ok(None) => attempts.push(PeerFailure {
                peer: "local store".to_owned(),
                outcome: PeerOutcome::NotFound,
            }),
            Err(err) => {
                tracing::warn!(block = %id, error = %err, "local copy unreadable; reading a replica");
                local_corrupt = matches!(err, Error::BlockCorrupt { .. });
                attempts.push(PeerFailure {
                    peer: "local store".to_owned(),
                    outcome: PeerOutcome::Failed(Box::new(err)),
                });
            }
        }
        let known: Vec<usize> = inner
            .lock_locations()
            .get(id)
            .map(|rs| {
                rs.iter()
                    .filter(|r| inner.state(r) != ReplicaState::Lost)
                    .map(|r| r.peer)
                    .collect()
            })
            .unwrap_or_default();
        let mut order = known.clone();
        order.extend((0..inner.peers.len()).filter(|i| !known.contains(i)));
        order.sort_by_key(|&i| !inner.peers[i].is_connected());
        for index in order {
            let peer = &inner.peers[index];
            match peer.get(id).await {
                Ok(Some(block)) => {
                    if local_corrupt {
                        // Replace the bad local copy so the next read is local again.
                        let _ = inner.local.remove(id).await;
                        if let Err(err) = inner.local.put_verified(block.clone()).await {
                            tracing::warn!(block = %id, error = %err, "could not restore the local copy");
                        }
                    }
                    return Ok(block);
                }
                Ok(None) => attempts.push(PeerFailure {
                    peer: peer.addr().to_owned(),
                    outcome: PeerOutcome::NotFound,
                }),
                Err(err) => attempts.push(PeerFailure {
                    peer: peer.addr().to_owned(),
                    outcome: PeerOutcome::Failed(Box::new(err)),
                }),
            }
        }
        Err(Error::BlockUnavailable {
            block: *id,
            attempts: PeerFailures(attempts),
        })
    }

    /// Removes blocks from the local store and from every peer that is connected (all
    /// peers, not only the known holders, so copies left by failed puts or by a previous
    /// driver go too). Peers that are down keep their copies; see [`RemoveReport`].
    pub async fn remove(&self, ids: &[BlockId]) -> RemoveReport {
        let inner = &self.inner;
        let mut report = RemoveReport::default();
        for id in ids {
            match inner.local.remove(id).await {
                Ok(true) => report.local_removed += 1,
                Ok(false) => {}
                Err(err) => report.failures.0.push(PeerFailure {
                    peer: "local store".to_owned(),
                    outcome: PeerOutcome::Failed(Box::new(err)),
                }),
            }
        }
        {
            let mut locations = inner.lock_locations();
            for id in ids {
                locations.remove(id);
            }
        }
        let mut calls = JoinSet::new();
        for (index, peer) in inner.peers.iter().enumerate() {
            let peer = peer.clone();
            let ids = ids.to_vec();
            calls.spawn(async move {
                let result = peer.remove(&ids).await;
                (index, result)
            });
        }
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((index, Ok(count))) => report
                    .peer_removed
                    .push((inner.peers[index].addr().to_owned(), count)),
                Ok((index, Err(err))) => {
                    inner.defer_removals(index, ids);
                    report.failures.0.push(PeerFailure {
                        peer: inner.peers[index].addr().to_owned(),
                        outcome: PeerOutcome::Failed(Box::new(err)),
                    });
                }
                Err(join) => tracing::error!(error = %join, "remove task failed"),
            }
        }
        report.peer_removed.sort();
        report
    }

    /// Drops the local copies of blocks but keeps their peer replicas (and the knowledge
    /// of where they are): for blocks the engine has consumed, whose bytes it will only
    /// need again to recompute after a failure. [`ReplicatedStore::get`] then reads them
    /// from a replica, and repair still keeps `peer_replicas` of them. Returns how many
    /// local copies were dropped.
    pub async fn release_local(&self, ids: &[BlockId]) -> Result<u64> {
        let mut released = 0;
        for id in ids {
            if self.inner.local.remove(id).await? {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Lists every block on every reachable peer: how a restarted driver discovers what
    /// its predecessor replicated (to fetch it with [`ReplicatedStore::get`], or to remove
    /// what no checkpoint references any more).
    pub async fn list_remote(&self) -> RemoteListing {
        let mut listing = RemoteListing::default();
        let mut calls = JoinSet::new();
        for peer in &self.inner.peers {
            let peer = peer.clone();
            calls.spawn(async move {
                let result = peer.list().await;
                (peer.addr().to_owned(), result)
            });
        }
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((peer, Ok(ids))) => {
                    for id in ids {
                        listing.blocks.entry(id).or_default().push(peer.clone());
                    }
                }
                Ok((peer, Err(err))) => listing.failures.0.push(PeerFailure {
                    peer,
                    outcome: PeerOutcome::Failed(Box::new(err)),
                }),
                Err(join) => tracing::error!(error = %join, "list task failed"),
            }
        }
        for holders in listing.blocks.values_mut() {
            holders.sort();
        }
        listing
    }

    /// Re-replicates blocks that lost replicas (see the module docs); returns what it did.
    pub async fn repair(&self) -> RepairReport {
        self.inner.repair().await
    }

    /// The peers currently holding a live replica of `id`, as far as this store knows.
    pub fn live_replicas(&self, id: &BlockId) -> Vec<String> {
        let inner = &self.inner;
        inner
            .lock_locations()
            .get(id)
            .map(|rs| {
                rs.iter()
                    .filter(|r| inner.state(r) == ReplicaState::Live)
                    .map(|r| inner.peers[r.peer].addr().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The local store.
    pub fn local(&self) -> &BlockManager {
        &self.inner.local
    }

    /// State and counters of every peer, in the order given to [`ReplicatedStore::open`].
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.inner.peers.iter().map(PeerClient::status).collect()
    }

    /// Waits until at least `count` peers are connected, at most `timeout`; returns whether
    /// they are.
    pub async fn wait_for_peers(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let connected = self.inner.peers.iter().filter(|p| p.is_connected()).count();
            if connected >= count {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

impl Drop for ReplicatedStore {
    fn drop(&mut self) {
        if let Some(task) = self.repair_task.take() {
            task.abort();
        }
    }
}

impl Inner {
    fn lock_locations(&self) -> MutexGuard<'_, HashMap<BlockId, Vec<Replica>>> {
        self.locations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self, replica: &Replica) -> ReplicaState {
        let peer = &self.peers[replica.peer];
        match peer.remote() {
            Some(node) if node.instance == replica.instance => ReplicaState::Live,
            Some(_) => ReplicaState::Lost,
            None => {
                let status = peer.status();
                let same_process = status
                    .node
                    .as_ref()
                    .is_none_or(|n| n.instance == replica.instance);
                if same_process
                    && status.in_state_for < Duration::from_millis(self.config.peer_dead_after_ms)
                {
                    ReplicaState::Suspect
                } else {
                    ReplicaState::Lost
                }
            }
        }
    }

    /// Puts `block` on peers taken from `order` until `need` acknowledged, at most `need`
    /// at a time; a failed peer is replaced by the next in `order`. The caller verified the
    /// block's checksum just before (so the frames are encoded without re-reading it).
    async fn place(
        &self,
        block: &Block,
        order: &[usize],
        need: usize,
    ) -> (Vec<Replica>, Vec<ReplicaInfo>, PeerFailures) {
        let mut replicas = Vec::new();
        let mut stored = Vec::new();
        let mut failures = Vec::new();
        let mut outcome = |index: usize, result: Result<(Tier, u64)>| match result {
            Ok((tier, instance)) => {
                replicas.push(Replica {
                    peer: index,
                    instance,
                });
                stored.push(ReplicaInfo {
                    peer: self.peers[index].addr().to_owned(),
                    tier,
                });
            }
            Err(err) => failures.push(PeerFailure {
                peer: self.peers[index].addr().to_owned(),
                outcome: PeerOutcome::Failed(Box::new(err)),
            }),
        };
        if need == 1 {
            // The common case, without spawning: one peer at a time, in order.
            for &index in order {
                let result = self.peers[index].put_on_instance(block.clone(), true).await;
                let ok = result.is_ok();
                outcome(index, result);
                if ok {
                    break;
                }
            }
        } else {
            let mut next = 0;
            let mut calls = JoinSet::new();
            let launch = |calls: &mut JoinSet<_>, next: &mut usize| {
                let index = order[*next];
                *next += 1;
                let peer = self.peers[index].clone();
                let block = block.clone();
                calls.spawn(async move { (index, peer.put_on_instance(block, true).await) });
            };
            while calls.len() < need && next < order.len() {
                launch(&mut calls, &mut next);
            }
            while let Some(joined) = calls.join_next().await {
                match joined {
                    Ok((index, result)) => {
                        let failed = result.is_err();
                        outcome(index, result);
                        if failed && next < order.len() {
                            launch(&mut calls, &mut next);
                        }
                    }
                    Err(join) => {
                        // A put task cannot panic short of a bug; count it as a failed peer.
                        tracing::error!(error = %join, "replication task failed");
                        if next < order.len() {
                            launch(&mut calls, &mut next);
                        }
                    }
                }
            }
        }
        (replicas, stored, PeerFailures(failures))
    }

    /// After a failed put: drop the local copy if this put created it and no earlier put
    /// of the same block replicated it, and remove the replicas that did get stored.
    async fn undo_failed_put(&self, id: BlockId, newly_local: bool, replicas: &[Replica]) {
        let known = self.lock_locations().contains_key(&id);
        if newly_local
            && !known
            && let Err(err) = self.local.remove(&id).await
        {
            tracing::warn!(block = %id, error = %err, "could not drop the local copy of a failed put");
        }
        if known {
            return;
        }
        for replica in replicas {
            let peer = self.peers[replica.peer].clone();
            // Best effort and off the caller's path: an orphan left by a failed removal is
            // removed by the next `remove` of that id, which goes to every peer.
            tokio::spawn(async move {
                if let Err(err) = peer.remove(&[id]).await {
                    tracing::debug!(block = %id, error = %err, "could not remove a partial replica");
                }
            });
        }
    }

    /// Keeps removals for a peer that could not be reached, within `pending_removals_max`.
    fn defer_removals(&self, peer: usize, ids: &[BlockId]) {
        let max = self.config.pending_removals_max;
        let mut pending = self
            .pending_removals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let queue = &mut pending[peer];
        queue.extend(ids.iter().copied());
        if queue.len() > max {
            let dropped = queue.len() - max;
            queue.drain(..dropped);
            tracing::warn!(
                peer = self.peers[peer].addr(),
                dropped,
                "`pending_removals_max` reached: forgetting the oldest undelivered removals; \
                 list_remote finds what they leave behind"
            );
        }
    }

    /// Delivers removals kept for peers that are connected again.
    async fn retry_removals(&self, report: &mut RepairReport) {
        for (index, peer) in self.peers.iter().enumerate() {
            if !peer.is_connected() {
                continue;
            }
            let ids: Vec<BlockId> = {
                let mut pending = self
                    .pending_removals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                pending[index].drain(..).collect()
            };
            if ids.is_empty() {
                continue;
            }
            match peer.remove(&ids).await {
                Ok(_) => report.removals_delivered += ids.len() as u64,
                Err(err) => {
                    self.defer_removals(index, &ids);
                    report.failures.0.push(PeerFailure {
                        peer: peer.addr().to_owned(),
                        outcome: PeerOutcome::Failed(Box::new(err)),
                    });
                }
            }
        }
    }

    fn record(&self, id: BlockId, replicas: &[Replica]) {
        let mut locations = self.lock_locations();
        let entry = locations.entry(id).or_default();
        for replica in replicas {
            entry.retain(|r| r.peer != replica.peer);
            entry.push(*replica);
        }
    }

    async fn repair(&self) -> RepairReport {
        let mut report = RepairReport::default();
        self.retry_removals(&mut report).await;
        let need = self.config.peer_replicas;
        let snapshot: Vec<(BlockId, Vec<Replica>)> = self
            .lock_locations()
            .iter()
            .map(|(id, rs)| (*id, rs.clone()))
            .collect();
        for (id, replicas) in snapshot {
            report.blocks_checked += 1;
            let mut kept = Vec::new();
            for replica in &replicas {
                match self.state(replica) {
                    ReplicaState::Lost => report.replicas_dropped += 1,
                    ReplicaState::Live | ReplicaState::Suspect => kept.push(*replica),
                }
            }
            if kept.len() >= need {
                if kept.len() < replicas.len() {
                    self.replace_replicas(id, &replicas, &kept);
                }
                continue;
            }
            let source = match self.local.get(&id).await {
                Ok(Some(block)) => Some(block),
                _ => self.fetch_from_replicas(&id, &kept).await,
            };
            let Some(block) = source else {
                report.under_replicated.push(id);
                continue;
            };
            let holders: Vec<usize> = kept.iter().map(|r| r.peer).collect();
            let start = self.next_peer.fetch_add(1, Ordering::Relaxed);
            let n = self.peers.len();
            let order: Vec<usize> = (0..n)
                .map(|i| (start + i) % n)
                .filter(|i| !holders.contains(i) && self.peers[*i].is_connected())
                .collect();
            let (made, _, failures) = self.place(&block, &order, need - kept.len()).await;
            report.replicas_made += made.len() as u64;
            report.failures.0.extend(failures.0);
            // The block may have been removed while we copied it: then the new replicas
            // are orphans, and go again.
            let still_wanted = self.lock_locations().contains_key(&id);
            if !still_wanted {
                for replica in &made {
                    let _ = self.peers[replica.peer].remove(&[id]).await;
                }
                continue;
            }
            let mut all = kept.clone();
            all.extend(made);
            if all.len() < need {
                report.under_replicated.push(id);
            }
            self.replace_replicas(id, &replicas, &all);
        }
        report
    }

    /// Replaces a block's replica list, unless it changed since `before` was read (a put
    /// or remove raced with the repair; the next pass looks again).
    fn replace_replicas(&self, id: BlockId, before: &[Replica], after: &[Replica]) {
        let mut locations = self.lock_locations();
        if let Some(current) = locations.get_mut(&id)
            && current.as_slice() == before
        {
            *current = after.to_vec();
        }
    }

    async fn fetch_from_replicas(&self, id: &BlockId, replicas: &[Replica]) -> Option<Block> {
        for replica in replicas {
            if let Ok(Some(block)) = self.peers[replica.peer].get(id).await {
                return Some(block);
            }
        }
        None
    }
}

async fn repair_loop(inner: Weak<Inner>, interval_ms: u64) {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let report = inner.repair().await;
        if report.replicas_made > 0 || report.replicas_dropped > 0 || report.removals_delivered > 0
        {
            tracing::info!(
                made = report.replicas_made,
                dropped = report.replicas_dropped,
                removals_delivered = report.removals_delivered,
                under_replicated = report.under_replicated.len(),
                "re-replicated blocks that lost replicas"
            );
        }
        if !report.under_replicated.is_empty() {
            tracing::warn!(
                blocks = report.under_replicated.len(),
                failures = %report.failures,
                "blocks remain below `peer_replicas`"
            );
        }
    }
}

// The engine shares these across tasks and spawns their futures: keep them Send + Sync.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn sendable<T: Send>(_: T) {}
    shared::<ReplicatedStore>();
    shared::<BlockManager>();
    shared::<PeerClient>();
    shared::<crate::BlockServer>();
    fn futures(store: &ReplicatedStore, block: Block, id: BlockId) {
        sendable(store.put(block));
        sendable(store.get(&id));
        sendable(store.remove(&[]));
        sendable(store.repair());
        sendable(store.list_remote());
    }
    let _ = futures;
};
