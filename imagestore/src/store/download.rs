//! One layer's download: single-flight per diff_id, the whole layer retried when the
//! connection drops mid-blob, a watchdog on the transfer rate, the bytes streamed through
//! digest verification into the sink on a blocking thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::Inner;
use super::blocking;
use super::pull::Progress;
use crate::blobs::{ChannelReader, VerifyingReader};
use crate::error::{Error, Result};
use crate::layer::LayerInput;
use crate::manifest::Descriptor;
use crate::registry::Session;

/// Whole-layer attempts when the connection drops mid-blob.
const LAYER_ATTEMPTS: u32 = 3;
const LAYER_RETRY_BACKOFF: Duration = Duration::from_millis(500);

impl Inner {
    pub(super) async fn pull_layer(
        self: &Arc<Self>,
        session: &Session,
        input: LayerInput,
        desc: Descriptor,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let _flight = self.flights.lock(&format!("layer:{}", input.diff_id)).await;
        let (sink, diff_id) = (self.sink.clone(), input.diff_id.clone());
        if blocking("look up layer", move || sink.lookup(&diff_id))
            .await?
            .is_some()
        {
            debug!(diff_id = %input.diff_id, "layer already present");
            progress.layers_present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // A connection lost mid-blob restarts the layer (the sink committed nothing).
        let mut delay = LAYER_RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            match self
                .download_layer(session, input.clone(), &desc, progress)
                .await
            {
                Err(e) if e.is_transient() && attempt < LAYER_ATTEMPTS => {
                    warn!(digest = %input.digest, attempt, error = %e,
                        "layer download failed, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn download_layer(
        self: &Arc<Self>,
        session: &Session,
        input: LayerInput,
        desc: &Descriptor,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let mut stream = session.open_blob(desc).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(16);
        let sink = self.sink.clone();
        let layer = input.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut reader =
                VerifyingReader::new(ChannelReader::new(rx), layer.digest.clone(), layer.size);
            sink.commit(&layer, &mut reader)
        });
        // A blob must keep arriving at `blob_min_bytes_per_sec`, measured over windows of
        // `blob_stall_secs` of time spent waiting on the network (time spent waiting on the
        // disk does not count): a server that drips cannot hold the pull for ever.
        let (min_rate, window) = self.blob_rate;
        let min_bytes = min_rate.saturating_mul(window.as_secs());
        let (mut waited, mut got) = (Duration::ZERO, 0u64);
        let mut gone = progress.gone.clone();
        loop {
            let started = Instant::now();
            let next = tokio::select! {
                _ = gone.changed() => Ok(Some(Err(progress.abandoned_error()))),
                r = tokio::time::timeout(window.saturating_sub(waited), stream.next()) => r,
            };
            waited += started.elapsed();
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => Err(Error::RegistryTimeout {
                    host: session.host().to_string(),
                    what: format!("blob {}", input.digest),
                    detail: format!(
                        "{got} bytes in {}s, less than images.blob_min_bytes_per_sec = \
                         {min_rate} over images.blob_stall_secs",
                        window.as_secs()
                    ),
                }),
            };
            if let Ok(c) = &chunk {
                got += c.len() as u64;
            }
            let chunk = if waited >= window {
                let slow = got < min_bytes;
                let detail = format!(
                    "{got} bytes in {}s, less than images.blob_min_bytes_per_sec = {min_rate} \
                     over images.blob_stall_secs",
                    waited.as_secs()
                );
                (waited, got) = (Duration::ZERO, 0);
                match chunk {
                    Ok(_) if slow => Err(Error::RegistryTimeout {
                        host: session.host().to_string(),
                        what: format!("blob {}", input.digest),
                        detail,
                    }),
                    other => other,
                }
            } else {
                chunk
            };
            let failed = chunk.is_err();
            if let Ok(c) = &chunk {
                progress.done.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            // A closed channel means the sink stopped (and will report why).
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        let record = writer.await.map_err(|e| Error::Interrupted {
            what: format!("layer {}", input.digest),
            detail: e.to_string(),
        })??;
        debug!(diff_id = %record.diff_id, size = record.size, "layer committed");
        Ok(())
    }
}
