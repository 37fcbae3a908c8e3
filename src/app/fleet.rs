//! Devices and customers: the registry the commit path reads and the [`Fleet`] handle the API
//! and the board use.

use super::{App, CoreError};
use crate::domain::DeviceId;
use crate::fleet::{Customer, Device};
use crate::netguard::AddressPolicy;
use crate::store::Store;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// The fleet registry in memory, as the store holds it. Devices are keyed by their `DeviceId`,
/// which borrows as `str`: the commit path looks a device up by a reading's id without building
/// one.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) devices: HashMap<DeviceId, Device>,
    pub(super) customers: HashMap<String, Customer>,
}

impl Registry {
    pub(super) fn load(store: &Store) -> Result<Registry, CoreError> {
        Ok(Registry {
            devices: store
                .fleet_devices::<Device>()?
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect(),
            customers: store
                .fleet_customers::<Customer>()?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
        })
    }
}

/// Devices and customers for the API and the board. Reads take the registry's read lock only:
/// they never wait for the processor, which holds the writer's core across a group's commit
/// and flush (and the registry's write lock is held only for an upsert's in-memory swap).
#[derive(Clone)]
pub struct Fleet {
    registry: Arc<RwLock<Registry>>,
    writer: Arc<App>,
}

impl Fleet {
    pub(super) fn new(registry: Arc<RwLock<Registry>>, writer: Arc<App>) -> Fleet {
        Fleet { registry, writer }
    }

    pub fn device(&self, id: &str) -> Option<Device> {
        self.registry.read().devices.get(id).cloned()
    }

    pub fn customer(&self, id: &str) -> Option<Customer> {
        self.registry.read().customers.get(id).cloned()
    }

    /// Every device, by id.
    pub fn devices(&self) -> Vec<Device> {
        let mut v: Vec<Device> = self.registry.read().devices.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Every customer, by id.
    pub fn customers(&self) -> Vec<Customer> {
        let mut v: Vec<Customer> = self.registry.read().customers.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Where customers' webhook contacts may point (`[notify.webhook] allow`): what a customer
    /// written through the API is checked against.
    pub fn contact_policy(&self) -> &AddressPolicy {
        &self.writer.settings.contact_policy
    }

    /// Inserts or replaces fleet records (validated by the caller) in one commit, through the
    /// single writer. In cluster mode they are then put in the fleet-wide registry, which every
    /// instance applies; an error there is returned (the records are stored here, and the
    /// others do not have them until they are written again). Blocking: call it from a
    /// blocking thread.
    pub fn upsert(&self, customers: Vec<Customer>, devices: Vec<Device>) -> Result<(), CoreError> {
        match &self.writer.fleetwide {
            None => self.writer.upsert_fleet(customers, devices),
            Some(fleetwide) => {
                self.writer
                    .upsert_fleet(customers.clone(), devices.clone())?;
                fleetwide.share_registry(&customers, &devices)?;
                Ok(())
            }
        }
    }
}

impl App {
    /// Applies fleet records read from the fleet-wide registry (cluster mode) through the same
    /// upsert as the API's; records this instance already holds as they are are left out (the
    /// instance's own, seen again). Returns how many were written. Blocking.
    pub fn apply_shared_fleet(
        &self,
        mut customers: Vec<Customer>,
        mut devices: Vec<Device>,
    ) -> Result<usize, CoreError> {
        {
            let registry = self.registry.read();
            customers.retain(|c| registry.customers.get(&c.id) != Some(c));
            devices.retain(|d| registry.devices.get(d.id.as_str()) != Some(d));
        }
        let n = customers.len() + devices.len();
        if n > 0 {
            self.upsert_fleet(customers, devices)?;
        }
        Ok(n)
    }
}

impl App {
    fn upsert_fleet(
        &self,
        customers: Vec<Customer>,
        devices: Vec<Device>,
    ) -> Result<(), CoreError> {
        let mut core = self.core.lock();
        // The step log replays under the registry of the day: write these devices' whole
        // states before it changes.
        self.recover_if_needed(&mut core)?;
        let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
        self.snapshot_devices(&mut core, &ids, true)?;
        let mut tx = self.store.tx();
        {
            let registry = self.registry.read();
            for c in &customers {
                if let Some(old) = registry.customers.get(&c.id) {
                    crate::fleet::prune_contact_index(&self.store, &mut tx, old, c)?;
                }
                tx.put_fleet_customer(&c.id, c);
            }
        }
        for d in &devices {
            tx.put_fleet_device(&d.id, d);
        }
        self.store.commit(tx)?;
        let mut registry = self.registry.write();
        for c in customers {
            registry.customers.insert(c.id.clone(), c);
        }
        for d in devices {
            core.unregistered.remove(d.id.as_str());
            registry.devices.insert(d.id.clone(), d);
        }
        self.metrics
            .unregistered_devices
            .set(core.unregistered.len() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::writer;
    use super::*;
    use std::time::Duration;

    #[test]
    fn fleet_reads_answer_while_the_writer_holds_its_core() {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = writer(dir.path());
        let fleet = app.fleet();
        let device = Device {
            id: crate::domain::DeviceId::parse("press-7").expect("device id"),
            customer_id: None,
            attributes: Default::default(),
        };
        fleet.upsert(vec![], vec![device]).expect("upsert");
        // What the processing thread holds across a group's commit and flush.
        let held = app.core.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = fleet.clone();
        std::thread::spawn(move || {
            let _ = tx.send((reader.device("press-7").is_some(), reader.devices().len()));
        });
        let answer = rx.recv_timeout(Duration::from_secs(5));
        drop(held);
        assert_eq!(answer.ok(), Some((true, 1)));
    }
}
