package scsstore

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
)

// encode builds the record for b expiring at expiry. It never fails for a
// []byte and a time: the error is there for json's sake.
func encode(b []byte, expiry time.Time) (map[string]json.RawMessage, error) {
	enc, err := json.Marshal(base64.StdEncoding.EncodeToString(b))
	if err != nil {
		return nil, err
	}
	return map[string]json.RawMessage{
		fieldData:   enc,
		fieldExpiry: json.RawMessage(strconv.FormatInt(ceilMilli(expiry), 10)),
	}, nil
}

// ceilMilli is t in ms since the epoch, rounded up: a session expiring
// within the next ms is not taken for expired (scs's own stores time to
// the ns).
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return ms
}

// decode reads a record written by encode; ok is false for any other shape.
func decode(data map[string]json.RawMessage) (b []byte, exp int64, ok bool) {
	var enc string
	if err := json.Unmarshal(data[fieldData], &enc); err != nil {
		return nil, 0, false
	}
	if err := json.Unmarshal(data[fieldExpiry], &exp); err != nil {
		return nil, 0, false
	}
	b, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, 0, false
	}
	return b, exp, true
}
