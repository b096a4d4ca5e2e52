//! Tests of the wire types: words tables, the flattened VM record and its schema.

#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn a_wire_enum_has_one_table_of_words_for_json_display_parsing_and_its_schema() {
    use crate::cluster::OpPhase;
    use crate::migration::MigrationPhase;
    assert_eq!(serde_json::to_string(&OpPhase::SaveToDisk).unwrap(), "\"save to disk\"");
    assert_eq!(serde_json::from_str::<OpPhase>("\"prepare images\"").unwrap(), OpPhase::PrepareImages);
    assert_eq!(format!("[{:<9}]", MigrationPhase::Postcopy), "[postcopy ]", "Display pads");
    let err = serde_json::from_str::<MigrationPhase>("\"warp\"").unwrap_err().to_string();
    assert!(err.contains("unknown migration phase \"warp\": use mirroring"), "{err}");
    let schema = serde_json::to_value(<MigrationPhase as utoipa::PartialSchema>::schema()).unwrap();
    assert_eq!(schema["type"], "string");
    let words: Vec<&str> = schema["enum"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
    assert_eq!(words, ["mirroring", "precopy", "switchover", "postcopy", "completed", "failed", "cancelled"]);
}

#[test]
fn maintenance_states_are_words_and_a_quarantine_says_how_often_it_failed() {
    assert_eq!(serde_json::to_value(Maintenance::EvacuationIncomplete).unwrap(), "evacuation-incomplete");
    let q = Maintenance::Quarantined { failures: 3, window_min: 10 };
    let v = serde_json::to_value(q).unwrap();
    assert_eq!(v["quarantined"]["failures"], 3);
    assert_eq!(serde_json::from_value::<Maintenance>(v).unwrap(), q);
    assert_eq!(q.to_string(), "quarantined: failed 3 times in 10 min; uncordon it once it is fixed");
}

#[test]
fn states_are_lower_case_on_the_wire() {
    assert_eq!(serde_json::to_string(&VmState::Suspended).ok().as_deref(), Some("\"suspended\""));
    assert_eq!(VmState::Running.to_string(), "running");
}

#[test]
fn words_round_trip_and_say_what_is_expected() {
    for h in [HaPolicy::Off, HaPolicy::Restart, HaPolicy::RestartFresh] {
        assert_eq!(h.to_string().parse::<HaPolicy>(), Ok(h));
        assert_eq!(serde_json::to_string(&h).ok(), Some(format!("\"{h}\"")), "the wire word is the same");
    }
    for m in [drs::DrsMode::Off, drs::DrsMode::Advise, drs::DrsMode::Auto] {
        assert_eq!(m.as_str().parse::<drs::DrsMode>(), Ok(m));
    }
    for a in [HaAdmission::Refuse, HaAdmission::Warn] {
        assert_eq!(a.as_str().parse::<HaAdmission>(), Ok(a));
    }
    for a in [AccelMode::Auto, AccelMode::Kvm, AccelMode::Tcg] {
        assert_eq!(a.as_str().parse::<AccelMode>(), Ok(a));
    }
    assert_eq!("shared".parse::<Storage>(), Ok(Storage::Shared));
    assert_eq!("nfs".parse::<Storage>(), Err("unknown storage \"nfs\": use local or shared".to_string()));
    assert_eq!(
        "fast".parse::<migration::MigrationMode>(),
        Err("unknown migration mode \"fast\": use auto, precopy or postcopy".to_string())
    );
    assert_eq!(
        "sometimes".parse::<drs::DrsMode>(),
        Err("unknown DRS mode \"sometimes\": use off, advise or auto".to_string())
    );
}

#[test]
fn pausing_an_inactive_vm_is_refused_with_a_hint() {
    let err = VmAction::Pause.check(VmState::Inactive).err().unwrap_or_default();
    assert!(err.contains("cannot pause a VM that is inactive"), "{err}");
    assert!(err.contains("corral vm start"), "{err}");
    assert!(VmAction::Pause.check(VmState::Running).is_ok());
}

#[test]
fn workloads_are_validated() {
    for ok in ["idle", "cpu", "dirty:64", "dirty:10:128"] {
        assert!(validate_workload(ok).is_ok(), "{ok}");
    }
    for bad in ["", "busy", "dirty:", "dirty:0", "dirty:a", "dirty:1:2:3"] {
        assert!(validate_workload(bad).is_err(), "{bad}");
    }
}

/// A VM record with every field set, as the controller stores and reports it.
fn vm_json() -> serde_json::Value {
    serde_json::json!({
        "name": "web1",
        "uuid": "6f1c1f3e-2a4b-4c5d-8e9f-0a1b2c3d4e5f",
        "state": "running",
        "host": "host-a",
        "template": "alpine",
        "vcpus": 2,
        "memory_mib": 512,
        "mac": "02:6f:1c:1f:3e:2a",
        "ip": "100.64.10.5/24",
        "workload": "dirty:64",
        "disk": "/var/lib/corral/vms/web1/disk.qcow2",
        "boot_ms": 1200,
        "error": "it failed once",
        "created_ms": 1700000000000u64,
        "usage": {"cpu_pct": 12.5, "cpu_demand_pct": 13.0, "rss_mib": 300, "guest_mem_used_mib": 100, "disk_bytes": 4096},
        "cluster": "c1",
        "index": 3,
        "pending": {"create": {"start": true}},
        "disk_mib": 2048,
        "network": {"vni": 42, "mtu": 1450},
        "migration": {"id": "m-1", "to": "host-b"},
        "ha": "restart",
        "storage": "shared",
        "firmware": "uefi",
        "user_data": "#cloud-config\npackages: [htop]\n",
        "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW alice@laptop"],
    })
}

#[test]
fn a_vm_is_its_definition_and_its_state_in_one_flat_document() {
    let doc = vm_json();
    // The definition's deny_unknown_fields sees only its own fields when flattened.
    let vm: Vm = serde_json::from_value(doc.clone()).expect("a full VM record reads");
    assert_eq!(vm.def.name, "web1");
    assert_eq!(vm.def.mac.to_string(), "02:6f:1c:1f:3e:2a");
    assert_eq!(vm.def.ip.map(|ip| ip.prefix()), Some(24));
    assert_eq!(vm.def.workload.as_str(), "dirty:64");
    assert_eq!(vm.def.network, Some(agent::NetAttach { vni: 42, mtu: 1450 }));
    assert_eq!((vm.def.ha, vm.def.storage), (HaPolicy::Restart, Storage::Shared));
    assert_eq!((vm.state, vm.host.as_str(), vm.index), (VmState::Running, "host-a", Some(3)));
    assert_eq!(serde_json::to_value(&vm).expect("serializes"), doc, "the same flat document, field for field");
    // Its definition is what an agent accepts (the agent refuses unknown fields).
    let def = serde_json::to_value(&vm.def).expect("serializes");
    assert_eq!(serde_json::from_value::<agent::VmDefinition>(def).expect("an agent reads it"), vm.def);

    // Fields left out take their defaults, as before.
    let mut min = doc.as_object().cloned().unwrap_or_default();
    for f in [
        "ip",
        "disk",
        "boot_ms",
        "error",
        "usage",
        "cluster",
        "index",
        "pending",
        "disk_mib",
        "network",
        "migration",
        "ha",
        "storage",
    ] {
        min.remove(f);
    }
    let vm: Vm = serde_json::from_value(serde_json::Value::Object(min)).expect("a minimal record reads");
    assert_eq!((vm.def.ip, vm.def.network, vm.def.disk_mib), (None, None, None));
    assert_eq!((vm.def.ha, vm.def.storage, vm.pending), (HaPolicy::Off, Storage::Local, None));

    // A field it does not know is passed over, as before (a record of a newer controller).
    let mut newer = doc.clone();
    newer["priority"] = serde_json::json!(5);
    let read = |d| serde_json::from_value::<Vm>(d).expect("reads");
    assert_eq!(read(newer), read(doc));
}

#[test]
fn a_bad_value_in_a_vm_record_is_refused_even_though_its_definition_is_flattened() {
    for (field, bad, says) in [
        ("mac", serde_json::json!("zz"), "invalid MAC"),
        ("vcpus", serde_json::json!(0), "invalid vCPU count"),
        ("memory_mib", serde_json::json!(1), "invalid memory size"),
        ("name", serde_json::json!("../x"), "invalid name"),
        ("ip", serde_json::json!("100.64.10.5"), "invalid IPv4 address"),
        ("workload", serde_json::json!("rm -rf /"), "invalid workload"),
        ("disk_mib", serde_json::json!(0), "invalid disk size"),
        ("network", serde_json::json!({"vni": 0, "mtu": 1450}), "invalid VNI"),
    ] {
        let mut doc = vm_json();
        doc[field] = bad;
        let e = serde_json::from_value::<Vm>(doc).expect_err(field).to_string();
        assert!(e.contains(says), "{field}: {e}");
    }
    let mut doc = vm_json();
    doc.as_object_mut().map(|o| o.remove("mac"));
    let e = serde_json::from_value::<Vm>(doc).expect_err("no MAC").to_string();
    assert!(e.contains("missing field `mac`"), "{e}");
}

#[test]
fn the_vm_schema_lists_every_field_and_lets_a_vm_have_them_all() {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    // The parts of an allOf (the definition's is wrapped once more, with its description).
    fn objects(s: &RefOr<Schema>, out: &mut Vec<utoipa::openapi::schema::Object>) {
        match s {
            RefOr::T(Schema::AllOf(all)) => all.items.iter().for_each(|i| objects(i, out)),
            RefOr::T(Schema::Object(o)) => out.push(o.clone()),
            _ => panic!("a VM's schema is made of inline objects"),
        }
    }
    let mut parts = Vec::new();
    objects(&<Vm as utoipa::PartialSchema>::schema(), &mut parts);
    let mut props = std::collections::BTreeSet::new();
    let mut required = std::collections::BTreeSet::new();
    for o in &parts {
        // An agent refuses unknown fields; no part of a VM's schema may, or no VM matches.
        assert!(o.additional_properties.is_none());
        props.extend(o.properties.keys().cloned());
        required.extend(o.required.iter().cloned());
    }
    let fields: std::collections::BTreeSet<String> =
        vm_json().as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    assert_eq!(props, fields);
    let want = ["name", "uuid", "template", "vcpus", "memory_mib", "mac", "workload", "state", "host", "created_ms"];
    assert_eq!(required, want.iter().map(|s| s.to_string()).collect());
    // What it refers to is registered with it.
    let mut schemas = Vec::new();
    <Vm as utoipa::ToSchema>::schemas(&mut schemas);
    let names: Vec<&str> = schemas.iter().map(|(n, _)| n.as_str()).collect();
    for n in ["NetAttach", "Storage", "HaPolicy", "VmState", "VmUsage", "Pending", "MigrationRef"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names.contains(&"OpenDefinition"), "{names:?}");
}
