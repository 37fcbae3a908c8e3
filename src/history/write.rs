//! The writer of history files, in the layout [`super::read`] reads back: RFC 3339 timestamps,
//! an empty cell for a missing value, text fields quoted when they hold a separator or a quote.

use crate::domain::{DeviceEvent, Timestamp};
use std::io::Write;

/// Writes a text field, quoted when the CSV syntax needs it.
fn field(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    if s.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", s.replace('"', "\"\""))
    } else {
        out.write_all(s.as_bytes())
    }
}

/// `telemetry.csv`: `device_id,ts,<metric>…`.
pub struct TelemetryWriter<W: Write> {
    out: W,
    width: usize,
    /// Consecutive readings usually share their timestamp: its text is formatted once.
    ts_text: (Timestamp, String),
}

impl<W: Write> TelemetryWriter<W> {
    /// Writes the header row.
    pub fn new(mut out: W, metrics: &[&str]) -> std::io::Result<Self> {
        out.write_all(b"device_id,ts")?;
        for m in metrics {
            out.write_all(b",")?;
            field(&mut out, m)?;
        }
        out.write_all(b"\n")?;
        Ok(TelemetryWriter {
            out,
            width: metrics.len(),
            ts_text: (Timestamp::MIN, String::new()),
        })
    }

    /// One reading: `values` in the header's metric order; a non-finite value is written as an
    /// empty cell (missing). Values beyond the header's width are an error.
    pub fn row(
        &mut self,
        device_id: &str,
        ts: Timestamp,
        values: impl IntoIterator<Item = f64>,
    ) -> std::io::Result<()> {
        if self.ts_text.0 != ts || self.ts_text.1.is_empty() {
            self.ts_text = (ts, ts.format());
        }
        field(&mut self.out, device_id)?;
        write!(self.out, ",{}", self.ts_text.1)?;
        let mut n = 0;
        for v in values {
            n += 1;
            if v.is_finite() {
                write!(self.out, ",{v}")?;
            } else {
                self.out.write_all(b",")?;
            }
        }
        if n != self.width {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{n} values for {} metric columns", self.width),
            ));
        }
        self.out.write_all(b"\n")
    }

    /// Flushes what was written so far (an appending writer keeps the file open).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `events.csv`: `device_id,ts,kind,code`, optionally with the fifth column `outcome`.
pub struct EventWriter<W: Write> {
    out: W,
    with_outcome: bool,
}

impl<W: Write> EventWriter<W> {
    /// Writes the header row.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"device_id,ts,kind,code\n")?;
        Ok(EventWriter {
            out,
            with_outcome: false,
        })
    }

    /// Writes the header row with the `outcome` column (`forewarn export`).
    pub fn with_outcome(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"device_id,ts,kind,code,outcome\n")?;
        Ok(EventWriter {
            out,
            with_outcome: true,
        })
    }

    pub fn row(&mut self, e: &DeviceEvent) -> std::io::Result<()> {
        self.row_with_outcome(e, None)
    }

    /// One event; `outcome` is written only by a writer made [`with_outcome`](Self::with_outcome).
    pub fn row_with_outcome(
        &mut self,
        e: &DeviceEvent,
        outcome: Option<&str>,
    ) -> std::io::Result<()> {
        field(&mut self.out, &e.device_id)?;
        write!(self.out, ",{},{},", e.ts.format(), e.kind.as_str())?;
        field(&mut self.out, &e.code)?;
        if self.with_outcome {
            self.out.write_all(b",")?;
            field(&mut self.out, outcome.unwrap_or(""))?;
        }
        self.out.write_all(b"\n")
    }

    /// Flushes what was written so far (an appending writer keeps the file open).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `devices.csv`: `device_id,<attribute>…`.
pub struct DeviceWriter<W: Write> {
    out: W,
}

impl<W: Write> DeviceWriter<W> {
    /// Writes the header row.
    pub fn new(mut out: W, attributes: &[&str]) -> std::io::Result<Self> {
        out.write_all(b"device_id")?;
        for a in attributes {
            out.write_all(b",")?;
            field(&mut out, a)?;
        }
        out.write_all(b"\n")?;
        Ok(DeviceWriter { out })
    }

    /// One device: `values` in the header's attribute order.
    pub fn row(&mut self, device_id: &str, values: &[&str]) -> std::io::Result<()> {
        field(&mut self.out, device_id)?;
        for v in values {
            self.out.write_all(b",")?;
            field(&mut self.out, v)?;
        }
        self.out.write_all(b"\n")
    }

    /// Flushes what was written so far (an appending writer keeps the file open).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::{read_devices, read_events, read_telemetry, BadRows};
    use super::*;
    use crate::domain::EventKind;
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn what_is_written_reads_back_the_same(
            rows in proptest::collection::vec((
                "[a-z0-9,\"é-]{1,8}",
                -62_000_000_000_000i64..253_402_300_799_999,
                proptest::collection::vec(prop_oneof![4 => any::<f64>().prop_filter("finite", |v| v.is_finite()), 1 => Just(f64::NAN)], 2),
            ), 0..20),
            code in "[a-z0-9 ,\"]{0,10}",
        ) {
            let mut w = TelemetryWriter::new(Vec::new(), &["a", "b,c"]).unwrap();
            for (id, ts, v) in &rows {
                w.row(id, Timestamp::from_millis(*ts), v.iter().copied()).unwrap();
            }
            let text = w.finish().unwrap();
            let mut back = Vec::new();
            let (names, _) = read_telemetry(&text[..], Path::new("t.csv"), BadRows::Fail, |r| {
                back.push((r.device_id.to_string(), r.ts, r.values.to_vec()));
                Ok(())
            }).unwrap();
            prop_assert_eq!(names, vec!["a".to_string(), "b,c".to_string()]);
            prop_assert_eq!(back.len(), rows.len());
            for ((id, ts, v), (id2, ts2, v2)) in rows.iter().zip(&back) {
                prop_assert_eq!(id, id2);
                prop_assert_eq!(*ts, ts2.as_millis());
                for (x, y) in v.iter().zip(v2) {
                    prop_assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                }
            }

            let ev = DeviceEvent { device_id: crate::domain::DeviceId::parse("d,1").unwrap(), ts: Timestamp::from_millis(5), kind: EventKind::Failure, code: format!("m{code}") };
            let mut w = EventWriter::new(Vec::new()).unwrap();
            w.row(&ev).unwrap();
            let text = w.finish().unwrap();
            let mut got = Vec::new();
            read_events(&text[..], Path::new("e.csv"), BadRows::Fail, |_, e| { got.push(e); Ok(()) }).unwrap();
            let want = DeviceEvent { code: ev.code.trim().to_string(), ..ev };
            prop_assert_eq!(got, vec![want]);
        }
    }

    #[test]
    fn device_attributes_read_back() {
        let mut w = DeviceWriter::new(Vec::new(), &["model", "site"]).unwrap();
        w.row("d1", &["A", "x,y"]).unwrap();
        w.row("d2", &["B", ""]).unwrap();
        let text = w.finish().unwrap();
        let (attrs, sum) = read_devices(&text[..], Path::new("d.csv"), BadRows::Fail).unwrap();
        assert_eq!(sum.rows, 2);
        assert_eq!(attrs["d1"]["site"], "x,y");
        assert!(!attrs["d2"].contains_key("site"));
    }
}
