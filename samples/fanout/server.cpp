#include "samples/fanout/server.hpp"

#include <mutex>
#include <vector>

namespace sample_fanout {

void CallSlots::acquire(int n) {
  std::shared_ptr<Waiter> w;
  {
    std::lock_guard<sample::Mutex> g(m_);
    if (line_.empty() && free_ >= n) {
      free_ -= n;
      return;
    }
    w = std::make_shared<Waiter>();
    w->n = n;
    w->ready.add(1);
    line_.push_back(w);
  }
  w->ready.wait();
}

void CallSlots::release(int n) {
  std::vector<std::shared_ptr<Waiter>> go;
  {
    std::lock_guard<sample::Mutex> g(m_);
    free_ += n;
    while (!line_.empty() && free_ >= line_.front()->n) {
      free_ -= line_.front()->n;
      go.push_back(std::move(line_.front()));
      line_.pop_front();
    }
  }
  for (auto& w : go) w->ready.done();  // the waiter shares it: it may end at once
}

std::size_t CallSlots::waiting() {
  std::lock_guard<sample::Mutex> g(m_);
  return line_.size();
}

}  // namespace sample_fanout
