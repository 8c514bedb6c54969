"""Exports of a block device (an AoE disk, or a local image): a FUSE file, an NBD server,
and a kernel /dev/nbdN binding. Import the modules directly: `aoe.export.blockdev`,
`aoe.export.fuse`, `aoe.export.nbdserver`, `aoe.export.attach`; the commands live in
`aoe.export.cli`. FUSE is loaded only when a mount is made."""
