// The Beast headers this sample uses, in one place. Under the sanitizers
// GCC 12 reports a false -Wmaybe-uninitialized inside Beast's parser (a
// boost::optional it returns); it is silenced here, for these headers only.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#pragma GCC diagnostic pop
