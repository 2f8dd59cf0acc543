// @devgate/backend-libvirt: libvirt as a devgate hypervisor backend. Every domain defined at a
// libvirt URI is a frontend; devices are attached live, tagged, and read back from libvirt.
export * from './virsh-transport.js';
export * from './parse-domain-xml.js';
export * from './libvirt-attach.js';
export * from './libvirt-connector.js';
export * from './libvirt-module.js';
export * from './libvirt-lab.js';
export * from './libvirt-generic.js';
