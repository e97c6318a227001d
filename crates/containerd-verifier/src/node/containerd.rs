//! containerd's own gRPC API over its socket (the containerd project's `containerd-client`
//! crate): namespaces, images, content, containers and tasks, each call bounded in time and in
//! what it returns. Blocking: each [`Containerd`] runs its calls on a private current-thread
//! runtime, so the callers (the watcher's threads, CLI commands) stay synchronous.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteImageRequest, ListContainersRequest, ListImagesRequest, ListNamespacesRequest, ListTasksRequest, ReadContentRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};

/// What one node's listing may hold: a containerd answering more is cut (and says so).
pub const MAX_NAMESPACES: usize = 100;
pub const MAX_IMAGES: usize = 10_000;
pub const MAX_CONTAINERS: usize = 10_000;
/// The largest index manifest read from the content store.
pub const MAX_INDEX_BYTES: usize = 4 << 20;

/// Why containerd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd's socket {socket}: {problem} (is containerd running, and is `containerd_socket` its `[grpc] address`?)")]
    Connect { socket: String, problem: String },
    #[error("containerd did not answer {what} within {seconds} s")]
    Timeout { what: &'static str, seconds: u64 },
    #[error("containerd refused {what}: {code:?}: {message}")]
    Call { what: &'static str, code: Code, message: String },
}

/// An image record of containerd's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub namespace: String,
    pub name: String,
    /// Its target: the manifest or index digest the name points at.
    pub digest: String,
    pub media_type: String,
    pub size: i64,
}

/// A container record, with its task's state when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredContainer {
    pub namespace: String,
    pub id: String,
    /// The image name it was created from (as containerd records it).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// The task's state (`running`, `stopped`, `created`, `paused`…), or `none`.
    pub task: &'static str,
}

/// A connection to containerd.
pub struct Containerd {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    timeout: Duration,
}

impl Containerd {
    /// Connects to the socket, each later call bounded by `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Containerd, ContainerdError> {
        let failed = |problem: String| ContainerdError::Connect { socket: socket.display().to_string(), problem };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| failed(e.to_string()))?;
        let channel = runtime
            .block_on(async { tokio::time::timeout(timeout, containerd_client::connect(socket)).await })
            .map_err(|_| failed(format!("no connection within {} s", timeout.as_secs())))?
            .map_err(|e| failed(error_chain(&e)))?;
        Ok(Containerd { runtime, channel, timeout })
    }

    /// Runs one call under the timeout.
    fn call<T, F: std::future::Future<Output = Result<T, containerd_client::tonic::Status>>>(&self, what: &'static str, call: F) -> Result<T, ContainerdError> {
        match self.runtime.block_on(async { tokio::time::timeout(self.timeout, call).await }) {
            Err(_) => Err(ContainerdError::Timeout { what, seconds: self.timeout.as_secs() }),
            Ok(Err(status)) => Err(ContainerdError::Call { what, code: status.code(), message: crate::limits::short(status.message(), 300) }),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// containerd's namespaces (`k8s.io`, `default`, `moby`, …), at most [`MAX_NAMESPACES`].
    pub fn namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let mut client = NamespacesClient::new(self.channel.clone());
        let listed = self.call("the namespace list", async move { client.list(ListNamespacesRequest::default()).await })?;
        let mut names: Vec<String> = listed.into_inner().namespaces.into_iter().map(|n| n.name).collect();
        names.sort();
        names.truncate(MAX_NAMESPACES);
        Ok(names)
    }

    /// The images of `namespace`, at most [`MAX_IMAGES`].
    pub fn images(&self, namespace: &str) -> Result<Vec<StoredImage>, ContainerdError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let request = in_namespace(ListImagesRequest::default(), namespace);
        let listed = self.call("the image list", async move { client.list(request).await })?;
        Ok(listed
            .into_inner()
            .images
            .into_iter()
            .take(MAX_IMAGES)
            .filter_map(|image| {
                let target = image.target?;
                Some(StoredImage { namespace: namespace.to_owned(), name: image.name, digest: target.digest, media_type: target.media_type, size: target.size })
            })
            .collect())
    }

    /// The bytes of a blob of the content store, when it holds it (at most `limit`).
    pub fn content(&self, namespace: &str, digest: &str, limit: usize) -> Result<Option<Vec<u8>>, ContainerdError> {
        let mut client = ContentClient::new(self.channel.clone());
        let request = in_namespace(ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 }, namespace);
        let read = async move {
            let mut stream = client.read(request).await?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                if bytes.len() + chunk.data.len() > limit {
                    return Ok(None);
                }
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(Some(bytes))
        };
        match self.call("a content read", read) {
            Err(ContainerdError::Call { code: Code::NotFound, .. }) => Ok(None),
            other => other,
        }
    }

    /// Deletes the image record `name` of `namespace` if it still points at `digest` (its
    /// content is left to containerd's garbage collector, which keeps what containers use).
    /// False when it was already gone or now points elsewhere.
    pub fn delete_image(&self, namespace: &str, name: &str, digest: &str, media_type: &str, size: i64) -> Result<bool, ContainerdError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let target =
            containerd_client::types::Descriptor { media_type: media_type.to_owned(), digest: digest.to_owned(), size, annotations: Default::default() };
        let request = in_namespace(DeleteImageRequest { name: name.to_owned(), sync: false, target: Some(target) }, namespace);
        match self.call("an image deletion", async move { client.delete(request).await }) {
            Ok(_) => Ok(true),
            Err(ContainerdError::Call { code: Code::NotFound, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The containers of `namespace` with their tasks' states, at most [`MAX_CONTAINERS`].
    pub fn containers(&self, namespace: &str) -> Result<Vec<StoredContainer>, ContainerdError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let request = in_namespace(ListTasksRequest::default(), namespace);
        let listed = self.call("the task list", async move { tasks.list(request).await })?;
        let states: BTreeMap<String, &'static str> =
            // containerd names a task by its container's id (`id`; `container_id` is not always set).
            listed.into_inner().tasks.into_iter().take(MAX_CONTAINERS).map(|t| (if t.container_id.is_empty() { t.id } else { t.container_id }, task_state(t.status))).collect();
        let mut containers = ContainersClient::new(self.channel.clone());
        let request = in_namespace(ListContainersRequest::default(), namespace);
        let listed = self.call("the container list", async move { containers.list(request).await })?;
        Ok(listed
            .into_inner()
            .containers
            .into_iter()
            .take(MAX_CONTAINERS)
            .map(|c| StoredContainer {
                namespace: namespace.to_owned(),
                task: states.get(&c.id).copied().unwrap_or("none"),
                id: c.id,
                image: c.image,
                labels: c.labels.into_iter().collect(),
            })
            .collect())
    }
}

/// A request carrying containerd's namespace header.
fn in_namespace<T>(message: T, namespace: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert("containerd-namespace", value);
    }
    request
}

/// The word for a task status (containerd.v1.types.Status).
fn task_state(status: i32) -> &'static str {
    match status {
        1 => "created",
        2 => "running",
        3 => "stopped",
        4 => "paused",
        5 => "pausing",
        _ => "unknown",
    }
}

/// An error with its sources, for the connection failures tonic nests.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
