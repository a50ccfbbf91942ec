#pragma once
// SO_REUSEPORT for the listeners of this process: several processes listen on one address and
// the kernel spreads new connections among them (`nebula gateway` replicas on one host). A
// process-wide setting, read by Server::listen(): a process that wants it has one listener.
namespace nebula::http {

void set_reuse_port(bool enabled);
bool reuse_port();

}  // namespace nebula::http
