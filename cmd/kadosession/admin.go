package main

import (
	"fmt"
	"net"
	"time"

	"github.com/kadosession/kadosession/transport"
)

// adminCall sends one OpAdmin request to addr and returns the JSON answer.
func adminCall(addr string, body []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := append([]byte{transport.MagicNative, transport.VersionNative},
		transport.AppendRequest(nil, &transport.Request{ID: 1, Op: transport.OpAdmin, Data: body})...)
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("send to %s: %w", addr, err)
	}
	frame, err := transport.ReadFrame(c, nil, 64<<20)
	if err != nil {
		return nil, fmt.Errorf("read answer from %s: %w", addr, err)
	}
	resp, err := transport.DecodeResponse(frame, transport.OpAdmin)
	if err != nil {
		return nil, fmt.Errorf("answer from %s: %w", addr, err)
	}
	if resp.Err != nil {
		return nil, fmt.Errorf("%s: %w", addr, resp.Err)
	}
	return resp.Data, nil
}
