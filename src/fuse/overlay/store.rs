//! The thread that writes `incoming/`'s new chunks and trees into packs.
//!
//! A [`BlobWriter`] borrows the repository, so it lives on the stack of one
//! thread that owns a handle to the repository. File system callbacks send it
//! staging files to chunk and trees to store, and wait for the result.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::id::TreeId;
use crate::repository::pack::BlobKind;
use crate::repository::{BlobWriter, RepoError, Repository};
use crate::tree::{Extent, Tree};

/// The content of a chunked staging file.
#[derive(Debug)]
pub(crate) struct StoredFile {
    pub content: Vec<Extent>,
    /// File length, the sum of the extent lengths.
    pub size: u64,
    /// Bytes read from the staging file (holes excluded).
    pub bytes_read: u64,
}

enum Request {
    File {
        file: Arc<File>,
        reply: Sender<Result<StoredFile, RepoError>>,
    },
    Tree {
        tree: Tree,
        reply: Sender<Result<TreeId, RepoError>>,
    },
    Flush {
        reply: Sender<Result<(), RepoError>>,
    },
}

/// Handle to the store thread.
pub(crate) struct Store {
    requests: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<Result<u64, RepoError>>>>,
    /// The first repository error. A pack that failed to be written may hold
    /// chunks that later files refer to, so no snapshot may be saved after one.
    failure: Mutex<Option<String>>,
}

impl Store {
    pub fn start(repo: Arc<Repository>) -> io::Result<Self> {
        let (sender, receiver) = unbounded();
        let thread = std::thread::Builder::new()
            .name("cairn-store".into())
            .spawn(move || serve(&repo, receiver))?;
        Ok(Self {
            requests: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            failure: Mutex::new(None),
        })
    }

    fn send<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, RepoError>>) -> Request,
    ) -> Result<T, RepoError> {
        let (reply, answer) = bounded(1);
        let sent = self
            .requests
            .lock()
            .expect("store sender lock")
            .as_ref()
            .map(|requests| requests.send(make(reply)).is_ok())
            .unwrap_or(false);
        let result = if sent {
            answer
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the store thread stopped").into()))
        } else {
            Err(io::Error::other("the store thread stopped").into())
        };
        if let Err(e) = &result {
            let mut failure = self.failure.lock().expect("store failure lock");
            if failure.is_none() {
                *failure = Some(e.to_string());
            }
        }
        result
    }

    /// Chunks a staging file and stores the chunks that the repository lacks.
    pub fn store_file(&self, file: Arc<File>) -> Result<StoredFile, RepoError> {
        self.send(|reply| Request::File { file, reply })
    }

    /// Writes the open chunk pack, so that the chunks of stored files can be
    /// read from the repository.
    pub fn flush(&self) -> Result<(), RepoError> {
        self.send(|reply| Request::Flush { reply })
    }

    /// Stores a tree unless the repository has it.
    pub fn store_tree(&self, tree: Tree) -> Result<TreeId, RepoError> {
        self.send(|reply| Request::Tree { tree, reply })
    }

    /// Returns the first repository error, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("store failure lock").clone()
    }

    /// Stops the thread after it wrote its open packs and their index file, and
    /// returns the bytes it added to the repository.
    pub fn finish(&self) -> Result<u64, RepoError> {
        self.requests.lock().expect("store sender lock").take();
        let thread = self.thread.lock().expect("store thread lock").take();
        match thread {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the store thread panicked").into())),
            None => Ok(0),
        }
    }
}

fn serve(repo: &Repository, requests: Receiver<Request>) -> Result<u64, RepoError> {
    let writer = repo.blob_writer();
    let mut buffer = Vec::new();
    for request in requests {
        match request {
            Request::File { file, reply } => {
                let _ = reply.send(store_file(repo, &writer, &file, &mut buffer));
            }
            Request::Tree { tree, reply } => {
                let _ = reply.send(writer.store_tree(&tree));
            }
            Request::Flush { reply } => {
                let _ = reply.send(writer.flush_chunks());
            }
        }
    }
    writer.finish()
}

/// Chunks a file as a backup does: a sparse file region by region with
/// SEEK_DATA and SEEK_HOLE so that holes cost nothing, any other file as one
/// stream, so that unchanged content gives the chunks it had before.
fn store_file(
    repo: &Repository,
    writer: &BlobWriter<'_>,
    file: &File,
    buffer: &mut Vec<u8>,
) -> Result<StoredFile, RepoError> {
    let metadata = file.metadata()?;
    let size = metadata.len();
    let mut content = Vec::new();
    let mut bytes_read = 0;
    if metadata.blocks() * 512 < size {
        let mut position = 0u64;
        while position < size {
            let Some(data) = seek(file, position, libc::SEEK_DATA)? else {
                push_hole(&mut content, size - position);
                break;
            };
            if data > position {
                push_hole(&mut content, data - position);
            }
            let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
            let region = ReadAt { file, offset: data }.take(hole - data);
            bytes_read += chunk_stream(repo, writer, region, buffer, &mut content)?;
            position = hole;
        }
    } else {
        bytes_read = chunk_stream(
            repo,
            writer,
            ReadAt { file, offset: 0 },
            buffer,
            &mut content,
        )?;
    }
    let stored: u64 = content.iter().map(Extent::len).sum();
    if stored != size {
        return Err(io::Error::other(format!(
            "staging file changed while it was chunked: {stored} of {size} bytes stored"
        ))
        .into());
    }
    Ok(StoredFile {
        content,
        size,
        bytes_read,
    })
}

fn chunk_stream(
    repo: &Repository,
    writer: &BlobWriter<'_>,
    reader: impl Read,
    buffer: &mut Vec<u8>,
    content: &mut Vec<Extent>,
) -> Result<u64, RepoError> {
    let level = repo.config().compression_level;
    let mut failure = None;
    let read = repo
        .chunker()
        .chunk_reader_with_buffer(reader, buffer, |chunk| {
            let id = repo.keys().chunk_id(chunk);
            content.push(Extent::Data {
                id,
                len: chunk.len() as u32,
            });
            if writer.reserve(&id.0) {
                let stored = repo
                    .keys()
                    .seal(BlobKind::Chunk.object_kind(), &id.0, chunk, level)
                    .map_err(|e| RepoError::Damaged {
                        object: format!("new chunk {}", id.short()),
                        detail: e.to_string(),
                    })
                    .and_then(|sealed| {
                        writer.add(BlobKind::Chunk, id.0, &sealed, chunk.len() as u32)
                    });
                if let Err(e) = stored {
                    failure = Some(e);
                    return Err(io::Error::other("storing a chunk failed"));
                }
            }
            Ok(())
        });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(read?)
}

fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    Ok(super::staging::seek(file, offset, whence)?.map(|position| position as u64))
}

fn push_hole(content: &mut Vec<Extent>, len: u64) {
    if let Some(Extent::Hole { len: previous }) = content.last_mut() {
        *previous += len;
    } else {
        content.push(Extent::Hole { len });
    }
}

struct ReadAt<'f> {
    file: &'f File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}
