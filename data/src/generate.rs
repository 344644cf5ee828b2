//! Running the generator: splits the persons into fixed units, generates and encodes units on
//! worker threads, and hands them to one consumer in unit order, so output is identical for
//! any thread count. Entry points [`generate`] (files) and [`generate_batches`] (memory).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;

use crate::activity::generate_unit;
use crate::config::{Format, GenConfig};
use crate::encode;
use crate::error::{Error, Result};
use crate::population::{UNIT_PERSONS, World};
use crate::sink::{self, EventSink, Payload, TruthSink};

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenSummary {
    /// Persons generated.
    pub persons: u64,
    /// Event rows written (retried duplicates included).
    pub events: u64,
    /// The event files, in order.
    pub files: Vec<std::path::PathBuf>,
    /// Rows in `truth.parquet`.
    pub truth_rows: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// One row of `truth.parquet`: identifier `value` (normalised) of `kind` belongs to person
/// `true_person`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TruthRow {
    /// `phone`, `email`, `unionid`, `openid`, `device` or `member`.
    pub kind: String,
    /// Normalised value: phones `+86` + 11 digits, emails trimmed lower case, openids
    /// `<appid>:<openid>`, others as written.
    pub value: String,
    /// The person's index, `0..persons`.
    pub true_person: u64,
    /// Values of one person in the same group are linked by the person's own events
    /// (directly or through a chain); values in different groups share no event.
    pub evidence_group: u32,
}

fn world(cfg: &GenConfig) -> World {
    World::new(cfg.seed, cfg.persons, cfg.days, cfg.end_date)
}

/// Generates events into `cfg.out` (created if missing): `events-NNNNN.<format>`,
/// `truth.parquet`, `tags.toml` and `manifest.json`. Event files of an earlier run in
/// `cfg.out` are removed first; other files are left alone. `progress` is called with the
/// number of persons finished since its last call.
pub fn generate(cfg: &GenConfig, progress: &(dyn Fn(u64) + Sync)) -> Result<GenSummary> {
    let started = Instant::now();
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(&cfg.out))?;
    sink::remove_old_event_files(&cfg.out)?;
    let world = world(cfg);
    let format = cfg.format;
    let mut events = EventSink::new(cfg);
    let mut truth = TruthSink::new(&cfg.out)?;

    let work = |unit: u64| -> Result<(u64, Payload, RecordBatch)> {
        let u = generate_unit(&world, unit);
        let payload = match format {
            Format::Parquet => Payload::Batch(encode::event_batch(&u)?),
            Format::Ndjson | Format::Csv => {
                let mut bytes = Vec::with_capacity(u.rows.len() * 400);
                let mut ends = Vec::with_capacity(u.rows.len());
                if format == Format::Ndjson {
                    encode::write_ndjson(&u, &mut bytes, &mut ends);
                } else {
                    encode::write_csv(&u, &mut bytes, &mut ends);
                }
                Payload::Text { bytes, ends }
            }
        };
        Ok((u.persons, payload, encode::truth_batch(&u)?))
    };
    run_ordered(units(cfg), cfg.worker_threads(), work, |out| {
        let (persons, payload, truth_batch) = out?;
        events.write(&payload)?;
        truth.write(&truth_batch)?;
        progress(persons);
        Ok(())
    })?;

    let (files, n_events) = events.finish()?;
    let truth_rows = truth.finish()?;
    sink::write_tags(&cfg.out)?;
    sink::write_manifest(cfg, n_events, &files)?;
    Ok(GenSummary {
        persons: cfg.persons,
        events: n_events,
        files,
        truth_rows,
        elapsed: started.elapsed(),
    })
}

/// In memory: the same events as [`generate`] writes, in the same order, as record batches
/// in [`crate::file_schema`] (one per unit of 1024 persons), and the truth rows.
pub fn generate_batches(cfg: &GenConfig) -> Result<(Vec<RecordBatch>, Vec<TruthRow>)> {
    cfg.validate()?;
    let world = world(cfg);
    let mut batches = Vec::new();
    let mut truth = Vec::new();
    let work = |unit: u64| -> Result<(RecordBatch, Vec<TruthRow>)> {
        let u = generate_unit(&world, unit);
        Ok((encode::event_batch(&u)?, encode::truth_rows(&u)))
    };
    run_ordered(units(cfg), cfg.worker_threads(), work, |out| {
        let (batch, rows) = out?;
        batches.push(batch);
        truth.extend(rows);
        Ok(())
    })?;
    Ok((batches, truth))
}

fn units(cfg: &GenConfig) -> u64 {
    cfg.persons.div_ceil(UNIT_PERSONS)
}

/// Units generated ahead of the consumer, at most, per thread.
const AHEAD_PER_THREAD: u64 = 2;

/// Runs `work(0..units)` on `threads` workers and feeds the results to `consume` in unit
/// order. Stops at the first error of `consume`.
fn run_ordered<T: Send>(
    units: u64,
    threads: usize,
    work: impl Fn(u64) -> T + Sync,
    mut consume: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let threads = threads.clamp(1, units.max(1) as usize);
    let window = threads as u64 * AHEAD_PER_THREAD;
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Units consumed so far; workers wait while they would run too far ahead.
    let consumed = Mutex::new(0u64);
    let advanced = Condvar::new();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(u64, T)>();
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, consumed, advanced, work) =
                (&next, &stop, &consumed, &advanced, &work);
            scope.spawn(move || {
                loop {
                    let unit = next.fetch_add(1, Ordering::Relaxed);
                    if unit >= units {
                        return;
                    }
                    {
                        let Ok(mut done) = consumed.lock() else {
                            return;
                        };
                        while unit >= *done + window && !stop.load(Ordering::Relaxed) {
                            let Ok(d) = advanced.wait(done) else { return };
                            done = d;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tx.send((unit, work(unit))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let mut pending = BTreeMap::new();
        let mut expected = 0u64;
        let result = (|| {
            for (unit, out) in &rx {
                pending.insert(unit, out);
                while let Some(out) = pending.remove(&expected) {
                    consume(out)?;
                    expected += 1;
                    let mut done = consumed
                        .lock()
                        .map_err(|_| Error::Internal("worker panicked".into()))?;
                    *done = expected;
                    advanced.notify_all();
                }
            }
            if expected != units {
                return Err(Error::Internal(format!(
                    "{expected} of {units} units generated (a worker panicked?)"
                )));
            }
            Ok(())
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Wake waiting workers so they see `stop`.
            drop(consumed.lock());
            advanced.notify_all();
        }
        drop(rx);
        result
    })
}
