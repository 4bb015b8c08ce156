//! [`BatchData`]: one stream's data for one batch, as partitions.

use std::fmt;
use std::sync::Arc;

/// The data of one stream for one batch (Spark's RDD of a batch), split into partitions.
///
/// Cloning is cheap (partitions are shared). The order of partitions, and of records within
/// a partition, is deterministic: recomputing the batch gives the same `BatchData`.
pub struct BatchData<T> {
    partitions: Vec<Arc<Vec<T>>>,
}

impl<T> Clone for BatchData<T> {
    fn clone(&self) -> Self {
        BatchData {
            partitions: self.partitions.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for BatchData<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.partitions.iter().map(|p| p.as_slice()))
            .finish()
    }
}

impl<T> Default for BatchData<T> {
    fn default() -> Self {
        BatchData {
            partitions: Vec::new(),
        }
    }
}

impl<T> BatchData<T> {
    /// No data and no partitions.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Data made of these partitions.
    pub fn from_partitions(partitions: Vec<Vec<T>>) -> Self {
        BatchData {
            partitions: partitions.into_iter().map(Arc::new).collect(),
        }
    }

    /// Data made of already shared partitions (no copy).
    pub(crate) fn from_shared(partitions: Vec<Arc<Vec<T>>>) -> Self {
        BatchData { partitions }
    }

    /// The shared partitions (no copy).
    pub(crate) fn shared_partitions(&self) -> &[Arc<Vec<T>>] {
        &self.partitions
    }

    /// The number of partitions.
    pub fn num_partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Partition `i`.
    ///
    /// # Panics
    /// If `i >= self.num_partitions()`.
    pub fn partition(&self, i: usize) -> &[T] {
        &self.partitions[i]
    }

    /// The partitions, in order.
    pub fn partitions(&self) -> impl ExactSizeIterator<Item = &[T]> + '_ {
        self.partitions.iter().map(|p| p.as_slice())
    }

    /// Every record, partition by partition.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.partitions.iter().flat_map(|p| p.iter())
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(|p| p.len()).sum()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(|p| p.is_empty())
    }
}

impl<T: Clone> BatchData<T> {
    /// Every record, copied into one vector.
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().cloned().collect()
    }
}

impl<T> From<Vec<T>> for BatchData<T> {
    /// One partition holding `records`.
    fn from(records: Vec<T>) -> Self {
        BatchData {
            partitions: vec![Arc::new(records)],
        }
    }
}

impl<T> FromIterator<T> for BatchData<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        BatchData::from(iter.into_iter().collect::<Vec<T>>())
    }
}
