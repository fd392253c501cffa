package middleware

import "testing"

func TestGenerateID(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		id := GenerateID("127.0.0.1", "kado-test")
		if !hex40.MatchString(id) || !validID(id) {
			t.Fatalf("GenerateID = %q, want 40 lowercase hex characters", id)
		}
		if seen[id] {
			t.Fatalf("GenerateID repeated %q", id)
		}
		seen[id] = true
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"generated", GenerateID("", ""), true},
		{"empty", "", false},
		{"short", "abc", false},
		{"uppercase", "ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD", false},
		{"not hex", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", false},
		{"proto", "__proto__", false},
		{"too long", GenerateID("", "") + "0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := validID(tt.id); got != tt.want {
				t.Fatalf("validID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}
