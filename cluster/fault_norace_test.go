//go:build !race

package cluster

// raceEnabled: see fault_race_test.go.
const raceEnabled = false
