// Package frontend groups the network targets that serve a blockdev.Device to
// hosts: frontend/nbd (the Network Block Device protocol) and frontend/iscsi
// (iSCSI, on top of the SCSI logical unit in frontend/scsi).
//
// The subpackages own protocol handling only. They never import the engine,
// replication or SeaweedFS: whatever implements blockdev.Device (an in-memory
// device in tests, a local or replicated volume in production) is handed to
// them by the wiring in weed/.
package frontend
