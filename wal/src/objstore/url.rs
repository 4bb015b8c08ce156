//! Storage URLs: where a WAL (or a checkpoint location) lives, parsed once and checked at
//! start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;

use super::client::{ObjectClient, RetryPolicy};
use crate::error::{Error, Result};

/// A parsed storage URL. See the [module docs](super) for the forms and the environment
/// they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageUrl {
    /// `file:///absolute/path`, or a plain path: local files with `fdatasync` and
    /// directory fsyncs (the `fs` layer), not an object store.
    Local(PathBuf),
    /// `memory://name/prefix`: an in-memory object store, shared by every open of the same
    /// `name` in this process and gone when it exits. For tests and trials.
    Memory {
        /// The store's name (the URL's host; empty for `memory:///prefix`).
        name: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// `s3://bucket/prefix`: Amazon S3 or an S3-compatible server.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// `hdfs://namenode:port/path` (or `viewfs://`): HDFS, with the `hdfs` cargo feature.
    Hdfs {
        /// `scheme://authority`, the file system to connect to.
        filesystem: String,
        /// The path within it, without leading or trailing `/`.
        prefix: String,
    },
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::Local(path) => write!(f, "file://{}", path.display()),
            StorageUrl::Memory { name, prefix } => write!(f, "memory://{name}/{prefix}"),
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StorageUrl::Hdfs { filesystem, prefix } => write!(f, "{filesystem}/{prefix}"),
        }
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidStorageUrl {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

/// Settings of an object-store connection beyond the URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectOptions {
    /// Request timeouts and retries.
    pub retry: RetryPolicy,
    /// S3 settings applied after those from the environment, as `object_store`'s
    /// `AmazonS3ConfigKey` names (`aws_endpoint`, `aws_allow_http`, `aws_access_key_id`,
    /// ...). Tests use this instead of changing the process environment.
    pub s3: Vec<(String, String)>,
}

impl StorageUrl {
    /// Parses a storage URL; a string without `://` is a local path. The error names the
    /// URL and what is wrong with it.
    pub fn parse(url: &str) -> Result<StorageUrl> {
        if url.trim().is_empty() {
            return Err(invalid(url, "empty"));
        }
        if !url.contains("://") {
            return Ok(StorageUrl::Local(PathBuf::from(url)));
        }
        let parsed = url::Url::parse(url).map_err(|e| invalid(url, e.to_string()))?;
        let prefix = parsed.path().trim_matches('/').to_owned();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(invalid(url, "the path may not contain `.` or `..`"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                url,
                "no query or fragment is accepted; S3 settings come from AWS_* environment \
                 variables",
            ));
        }
        match parsed.scheme() {
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(invalid(
                        url,
                        "a file URL names a local path: file:///absolute/path",
                    ));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| invalid(url, "not a local absolute path"))?;
                Ok(StorageUrl::Local(path))
            }
            "memory" => Ok(StorageUrl::Memory {
                name: parsed.host_str().unwrap_or("").to_owned(),
                prefix,
            }),
            "s3" | "s3a" => {
                let bucket = parsed.host_str().unwrap_or("").to_owned();
                if bucket.is_empty() {
                    return Err(invalid(url, "no bucket: use s3://bucket/prefix"));
                }
                if !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                    || bucket.len() < 3
                    || bucket.len() > 63
                {
                    return Err(invalid(
                        url,
                        format!(
                            "bucket {bucket:?} is not a valid S3 bucket name (3 to 63 lowercase \
                             letters, digits, `-` and `.`)"
                        ),
                    ));
                }
                Ok(StorageUrl::S3 { bucket, prefix })
            }
            "hdfs" | "viewfs" => {
                let host = parsed.host_str().unwrap_or("");
                if host.is_empty() {
                    return Err(invalid(url, "no name node: use hdfs://namenode:port/path"));
                }
                let filesystem = match parsed.port() {
                    Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
                    None => format!("{}://{host}", parsed.scheme()),
                };
                Ok(StorageUrl::Hdfs { filesystem, prefix })
            }
            other => Err(invalid(
                url,
                format!("unknown scheme {other:?}; expected s3://, file://, memory:// or hdfs://"),
            )),
        }
    }

    /// True for the forms served by an object store (all but [`StorageUrl::Local`]).
    pub fn is_object_store(&self) -> bool {
        !matches!(self, StorageUrl::Local(_))
    }

    /// The same location with `sub` appended to its path (`s3://b/p` + `wal/0` =
    /// `s3://b/p/wal/0`).
    pub fn join(&self, sub: &str) -> StorageUrl {
        let join = |prefix: &str| {
            let sub = sub.trim_matches('/');
            if prefix.is_empty() {
                sub.to_owned()
            } else {
                format!("{prefix}/{sub}")
            }
        };
        match self {
            StorageUrl::Local(path) => StorageUrl::Local(path.join(sub)),
            StorageUrl::Memory { name, prefix } => StorageUrl::Memory {
                name: name.clone(),
                prefix: join(prefix),
            },
            StorageUrl::S3 { bucket, prefix } => StorageUrl::S3 {
                bucket: bucket.clone(),
                prefix: join(prefix),
            },
            StorageUrl::Hdfs { filesystem, prefix } => StorageUrl::Hdfs {
                filesystem: filesystem.clone(),
                prefix: join(prefix),
            },
        }
    }

    /// Connects to the object store and checks, with one listing request, that the bucket
    /// exists and the credentials are accepted, so that a wrong setting fails at start-up,
    /// before any data is accepted. The error names the URL, what failed and which
    /// setting to look at. Fails for [`StorageUrl::Local`] (use the `fs` layer).
    pub fn connect(&self, options: &ObjectOptions) -> Result<ObjectClient> {
        let client = self.client(options)?;
        client.check_access().map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "the credentials were refused: check AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
                }
                std::io::ErrorKind::NotFound => {
                    "the bucket does not exist (or AWS_ENDPOINT points at another server)"
                }
                std::io::ErrorKind::TimedOut => "the server did not answer: check AWS_ENDPOINT",
                _ => {
                    "check the bucket name, AWS_ENDPOINT, AWS_REGION, AWS_ALLOW_HTTP (needed \
                     for an http:// endpoint) and the credentials"
                }
            };
            let text = e.to_string();
            let hint = if text.contains("NoSuchBucket") {
                "the bucket does not exist (or AWS_ENDPOINT points at another server)"
            } else if text.contains("AccessDenied")
                || text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
            {
                "the credentials were refused: check AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
            } else {
                hint
            };
            Error::StorageUnavailable {
                url: self.to_string(),
                reason: format!("{hint}; {text}"),
            }
        })?;
        Ok(client)
    }

    /// Connects without the start-up check (for tools that report errors per request).
    pub fn client(&self, options: &ObjectOptions) -> Result<ObjectClient> {
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match self {
            StorageUrl::Local(path) => {
                return Err(invalid(
                    &path.display().to_string(),
                    "a local path is not an object store; open it as a directory",
                ));
            }
            StorageUrl::Memory { name, prefix } => (memory_store(name), prefix),
            StorageUrl::S3 { bucket, prefix } => (s3_store(self, bucket, options)?, prefix),
            StorageUrl::Hdfs { filesystem, prefix } => (hdfs_store(self, filesystem)?, prefix),
        };
        let path = Path::parse(prefix).map_err(|e| invalid(&self.to_string(), e.to_string()))?;
        Ok(ObjectClient::new(
            store,
            path,
            self.to_string().trim_end_matches('/').to_owned(),
            options.retry,
        ))
    }
}

/// The process-wide in-memory store called `name`.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let store = stores
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()));
    Arc::clone(store) as Arc<dyn ObjectStore>
}

fn s3_store(
    url: &StorageUrl,
    bucket: &str,
    options: &ObjectOptions,
) -> Result<Arc<dyn ObjectStore>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // One attempt of ours is bounded by attempt_timeout; the HTTP client's own retries
    // (for throttling and 5xx answers) stay within it.
    builder = builder
        .with_config(
            AmazonS3ConfigKey::Client(object_store::ClientConfigKey::Timeout),
            format!("{}ms", options.retry.attempt_timeout.as_millis()),
        )
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: options.retry.backoff_initial,
                max_backoff: options.retry.backoff_max,
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: options.retry.attempt_timeout,
        });
    for (key, value) in &options.s3 {
        let key: AmazonS3ConfigKey =
            key.parse()
                .map_err(|e: object_store::Error| Error::StorageUnavailable {
                    url: url.to_string(),
                    reason: format!("unknown S3 setting {key}: {e}"),
                })?;
        builder = builder.with_config(key, value);
    }
    let store = builder.build().map_err(|e| Error::StorageUnavailable {
        url: url.to_string(),
        reason: format!(
            "cannot configure the S3 client (check AWS_ENDPOINT, AWS_REGION, AWS_ALLOW_HTTP and \
             the credentials): {e}"
        ),
    })?;
    Ok(Arc::new(store))
}

#[cfg(feature = "hdfs")]
fn hdfs_store(url: &StorageUrl, filesystem: &str) -> Result<Arc<dyn ObjectStore>> {
    let runtime = super::client::runtime().map_err(|e| Error::StorageUnavailable {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let store = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
        .with_url(filesystem)
        .with_io_runtime(runtime.handle().clone())
        .build()
        .map_err(|e| Error::StorageUnavailable {
            url: url.to_string(),
            reason: format!("cannot configure the HDFS client: {e}"),
        })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "hdfs"))]
fn hdfs_store(url: &StorageUrl, _filesystem: &str) -> Result<Arc<dyn ObjectStore>> {
    Err(invalid(
        &url.to_string(),
        "this build has no HDFS support; rebuild with the `hdfs` cargo feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_their_parts() {
        assert_eq!(
            StorageUrl::parse("s3://ember-test/wal/stream-0").unwrap(),
            StorageUrl::S3 {
                bucket: "ember-test".into(),
                prefix: "wal/stream-0".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("s3://ember-test").unwrap(),
            StorageUrl::S3 {
                bucket: "ember-test".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StorageUrl::parse("file:///var/lib/ember").unwrap(),
            StorageUrl::Local("/var/lib/ember".into())
        );
        assert_eq!(
            StorageUrl::parse("relative/dir").unwrap(),
            StorageUrl::Local("relative/dir".into())
        );
        assert_eq!(
            StorageUrl::parse("memory://t1/a/b/").unwrap(),
            StorageUrl::Memory {
                name: "t1".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("hdfs://nn.example.com:9000/ember/wal").unwrap(),
            StorageUrl::Hdfs {
                filesystem: "hdfs://nn.example.com:9000".into(),
                prefix: "ember/wal".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("s3://ember-test/p")
                .unwrap()
                .join("wal/3")
                .to_string(),
            "s3://ember-test/p/wal/3"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("", "empty"),
            ("s3:///prefix", "no bucket"),
            ("s3://B/prefix", "not a valid S3 bucket name"),
            ("s3://ember-test/a?region=x", "AWS_"),
            ("gs://bucket/x", "unknown scheme"),
            ("file://host/x", "local path"),
            ("s3://ember-test/a#frag", "no query or fragment"),
            ("hdfs:///x", "no name node"),
        ] {
            let err = StorageUrl::parse(url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(says), "{url}: {text}");
            assert!(text.contains(url), "{url}: the error names the URL: {text}");
        }
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = StorageUrl::parse("memory://shared-test/x").unwrap();
        let client = a.connect(&ObjectOptions::default()).unwrap();
        client
            .put_create("one", bytes::Bytes::from_static(b"1"))
            .unwrap();
        let again = a.connect(&ObjectOptions::default()).unwrap();
        assert_eq!(&again.get("one").unwrap()[..], b"1");
        let other = StorageUrl::parse("memory://other-test/x")
            .unwrap()
            .connect(&ObjectOptions::default())
            .unwrap();
        assert!(other.list().unwrap().is_empty());
    }
}
