package bridge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/store/memory"
)

// The store paho's State keeps the bridge's publishes in reads back what
// was put, serialised as paho's memory store would, lists the ids in the
// order they were put (a PUBREL replacing its PUBLISH goes last), and
// forgets what is deleted.
func TestLazyStore(t *testing.T) {
	s := newLazyStore()
	pub := func(id uint16) *packets.Publish {
		return &packets.Publish{PacketID: id, QoS: 1, Topic: "t/" + fmt.Sprint(id), Payload: []byte{byte(id)},
			Properties: &packets.Properties{}}
	}
	for _, id := range []uint16{7, 3, 9} {
		if err := s.Put(id, packets.PUBLISH, pub(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(7, packets.PUBREL, &packets.Pubrel{PacketID: 7}); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.List(); fmt.Sprint(ids) != "[3 9 7]" {
		t.Fatalf("List = %v, want [3 9 7]", ids)
	}
	r, err := s.Get(3)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	var want bytes.Buffer
	if _, err := pub(3).WriteTo(&want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("Get(3) = % x, want % x", got, want.Bytes())
	}
	cp, err := packets.ReadPacket(bytes.NewReader(got))
	if err != nil || cp.Type != packets.PUBLISH || cp.Content.(*packets.Publish).Topic != "t/3" {
		t.Fatalf("read back: %v %+v", err, cp)
	}
	if r, err := s.Get(7); err != nil {
		t.Fatal(err)
	} else if cp, err := packets.ReadPacket(r); err != nil || cp.Type != packets.PUBREL {
		t.Fatalf("Get(7) after the PUBREL: %v %+v", err, cp)
	}
	_ = s.Delete(9)
	_ = s.Quarantine(3)
	if _, err := s.Get(9); !errors.Is(err, memory.ErrNotInStore) {
		t.Fatalf("Get of a deleted id: %v", err)
	}
	if ids, _ := s.List(); fmt.Sprint(ids) != "[7]" {
		t.Fatalf("List after deletes = %v, want [7]", ids)
	}
	_ = s.Reset()
	if ids, _ := s.List(); len(ids) != 0 {
		t.Fatalf("List after Reset = %v", ids)
	}
}
