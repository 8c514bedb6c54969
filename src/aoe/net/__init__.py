"""The machine's side of the wire: the one raw socket class (:mod:`aoe.net.rawsock`), its
batching (:mod:`aoe.net.mmsg`), waiting for answers on a few sockets
(:mod:`aoe.net.responses`) and interface setup through pyroute2 (:mod:`aoe.net.link`)."""
