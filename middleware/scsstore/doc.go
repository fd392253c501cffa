// Package scsstore makes any kadosession middleware.Store (a MemoryStore or
// the cluster client) a session store for github.com/alexedwards/scs/v2: it
// implements scs.Store, scs.CtxStore and scs.IterableCtxStore.
//
//	sm := scs.New()
//	sm.Store = scsstore.New(kadosessionStore)
//	http.ListenAndServe(":8080", sm.LoadAndSave(mux))
//
// # Record format
//
// scs hands a store an opaque []byte and an absolute expiry time. The
// adapter keeps them in kadosession as one session, whose id is the scs
// token behind a prefix ("scs:" unless WithPrefix says otherwise), holding a
// JSON object of two fields:
//
//	{"scs": "<standard base64 of the bytes>", "exp": <expiry, ms since epoch>}
//
// Commit replaces the whole record (middleware.Store.Save).
//
// # Expiry
//
// Find compares "exp" with the adapter's clock: an expired record is not
// found even while it is still stored. The record is not deleted on read (a
// read never turns into a replicated write); kadosession itself prunes it
// once its own lifetime (the store's duration after the last save, 6 h by
// default) has passed. A session therefore lives until the earlier of its
// scs expiry and the store's duration after its last Commit: with scs's
// default Lifetime of 24 h and a store duration of 6 h, a session nobody
// modifies for 6 h is gone. Give the store a duration at least as long as
// scs's Lifetime (or IdleTimeout) when that matters.
//
// # Iteration
//
// middleware.Store has no way to list sessions, so All and AllCtx (used by
// scs's SessionManager.Iterate) need a Lister: the store itself when it
// implements one, or the Lister given with WithLister. Both kadosession
// stores do: middleware.MemoryStore lists its own state, and client.Store
// asks the cluster's leader page by page (each page a linearizable read;
// each costs the leader one pass over all its sessions, so Iterate is for
// administration, not every request). A store without one makes All and
// AllCtx return ErrNotIterable (scs's Iterate then returns that error
// instead of panicking, as it would for a store without iteration).
package scsstore
