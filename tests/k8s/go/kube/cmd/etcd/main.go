// etcd at the version Kubernetes itself requires (go.etcd.io/etcd/server/v3 in its go.mod).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
