//go:build race

package cluster

// raceEnabled: the race detector slows nodes down ~5-10x, so the fault
// tests run fewer schedules.
const raceEnabled = true
