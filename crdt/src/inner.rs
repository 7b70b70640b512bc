//! The store's shared core: the database, the writer threads' queues and the topic registry,
//! held by the [`crate::Store`] handles and by every topic handle.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use canopy_dag::{BlockStore, Signer, TopicId};
use crossbeam_channel::{Receiver, Sender};
use rocksdb::DB;

use crate::options::StoreOptions;
use crate::shared::TopicShared;
use crate::writer::Command;

/// The writer threads are gone: the store is closing.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) struct StoreInner {
    pub db: Arc<DB>,
    pub blocks: BlockStore,
    pub options: StoreOptions,
    /// The key local blocks are signed with.
    pub signer: Signer,
    /// The id counters know this store's increments by.
    pub origin: [u8; crate::counter::ORIGIN_BYTES],
    pub topics: RwLock<BTreeMap<String, Arc<TopicShared>>>,
    pub registry: Mutex<()>,
    pub writers: Mutex<Vec<Sender<Command>>>,
    pub threads: Mutex<Vec<JoinHandle<()>>>,
    pub poisoned: Arc<AtomicBool>,
    /// Requests for the compaction thread, by topic name.
    pub compactions: Sender<(String, crate::types::Work)>,
    /// Receivers of [`crate::Store::closed`] see this sender go. It is the last field, dropped
    /// after the database (the writer threads' handles are released first, in `drop`).
    pub closed_rx: Receiver<()>,
    pub _closed_tx: Sender<()>,
}

impl StoreInner {
    /// Asks the compaction thread for `work` on `name` soon; a full queue drops the request
    /// (the topic asks again as it grows, a peer as it waits).
    pub fn request(&self, name: &str, work: crate::types::Work) {
        let _ = self.compactions.try_send((name.to_string(), work));
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every canopy column family is opened with the database")
    }

    /// Queues a command for the writer thread that owns `topic`; fails once the store is
    /// closing.
    pub fn send(&self, topic: TopicId, command: Command) -> Result<(), Closed> {
        let writers = self.writers.lock().expect("writers lock");
        if writers.is_empty() {
            return Err(Closed);
        }
        let sender = writers[topic.0 as usize % writers.len()].clone();
        drop(writers);
        sender.send(command).map_err(|_| Closed)
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.writers.lock().expect("writers lock").clear();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            let _ = handle.join();
        }
    }
}
