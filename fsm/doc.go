// Package fsm owns the replicated session state: the sessions themselves, the
// commands that change them, their deterministic application, expiry, and the
// save-file document that is both Kado's save file and the raft snapshot.
//
// The package is pure. It does no network I/O, touches the disk only through
// the io.Reader and io.Writer it is handed, and never reads a clock: every
// command carries the time the leader stamped into it, so every replica that
// applies the same log ends in byte-identical state.
package fsm
