package weedshell

import (
	"context"
	"fmt"
	"io"

	"github.com/seaweedfs/seaweedfs/weed/pb"
	"github.com/seaweedfs/seaweedfs/weed/security"
	"github.com/seaweedfs/seaweedfs/weed/shell"
	"github.com/seaweedfs/seaweedfs/weed/util"
	"google.golang.org/grpc"

	"github.com/weedblock/weedblock/weed/blockshell"
	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Install appends the block commands to upstream's shell.Commands. It is
// idempotent: a command already there (by name) is not added again. Call
// it before `weed shell` runs.
func Install() {
	have := map[string]bool{}
	for _, c := range shell.Commands {
		have[c.Name()] = true
	}
	for _, c := range blockshell.Commands() {
		if !have[c.Name] {
			shell.Commands = append(shell.Commands, &command{name: c.Name, help: c.Help})
		}
	}
}

// command is one block command as upstream's shell sees it: it satisfies
// upstream's (unexported) command interface, whose methods are all
// exported.
type command struct {
	name, help string
}

func (c *command) Name() string                 { return c.name }
func (c *command) Help() string                 { return c.help }
func (c *command) HasTag(shell.CommandTag) bool { return false }

func (c *command) Do(args []string, env *shell.CommandEnv, out io.Writer) error {
	return blockshell.Run(context.Background(), Env(env), c.name, args, out)
}

// Env reaches the BlockMaster service of the master env's shell is
// connected to (upstream's master client follows the raft leader).
func Env(env *shell.CommandEnv) blockshell.Env {
	return blockshell.Env{
		Master: func(ctx context.Context) (string, error) {
			addr := env.MasterClient.GetMaster(ctx)
			if addr == "" {
				if err := ctx.Err(); err != nil {
					return "", fmt.Errorf("no master connection: %w", err)
				}
				return "", nil
			}
			return addr.ToGrpcAddress(), nil
		},
		Call: call,
	}
}

// call runs fn on a BlockMaster client at grpcAddr over upstream's shared
// gRPC connection cache, with the shell's client TLS.
func call(ctx context.Context, grpcAddr string, fn func(blockpb.BlockMasterClient) error) error {
	dial := security.LoadClientTLS(util.GetViper(), "grpc.client")
	return pb.WithGrpcClient(ctx, false, 0, func(cc *grpc.ClientConn) error {
		return fn(blockpb.NewBlockMasterClient(cc))
	}, grpcAddr, false, dial)
}
