#!/usr/bin/env node
'use strict';
// Makes the files the bundled examples name besides the probe guest (which `npm run build:probe`
// builds): drive images and an initrd under examples/disks/ (git ignores it), so that
// `fc-run validate examples/*.json` checks every example with its files right after set-up.
// Drive images are sparse: they take no disk space until a guest writes to them.
const fs = require('node:fs');
const path = require('node:path');

const dir = path.join(__dirname, '..', 'examples', 'disks');
fs.mkdirSync(dir, { recursive: true });

function sparse(name, bytes) {
  const file = path.join(dir, name);
  if (fs.existsSync(file)) return; // a guest may have written to it: keep what is there
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, bytes);
}

/** An empty cpio archive in the "newc" format: only the TRAILER!!! entry, padded to 512 bytes. */
function emptyCpio() {
  const name = 'TRAILER!!!\0';
  // c_ino, c_mode, c_uid, c_gid, c_nlink, c_mtime, c_filesize, c_devmajor, c_devminor, c_rdevmajor, c_rdevminor
  const fields = ['070701', '00000000', '00000000', '00000000', '00000000', '00000001', '00000000', '00000000', '00000000', '00000000', '00000000', '00000000'];
  fields.push(name.length.toString(16).padStart(8, '0'), '00000000');
  let head = fields.join('') + name;
  head += '\0'.repeat((4 - (head.length % 4)) % 4);
  return Buffer.concat([Buffer.from(head, 'latin1'), Buffer.alloc(512 - head.length)]);
}

sparse('rootfs.img', 64 * 1024 * 1024);
sparse('full-rootfs.img', 64 * 1024 * 1024);
sparse('full-scratch.img', 16 * 1024 * 1024);
const initrd = path.join(dir, 'initrd.cpio');
if (!fs.existsSync(initrd)) fs.writeFileSync(initrd, emptyCpio());
