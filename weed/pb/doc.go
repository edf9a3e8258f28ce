// Package pb holds the protobuf definitions of weedblock's control plane
// (block.proto) and, in blockpb, the generated Go code. Regenerate with
// `make proto`; the generated code is committed.
package pb
